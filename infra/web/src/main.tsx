import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { config, loadConfig } from "./config";
import "./styles.css";

// The configuration first (config.json may name the user pool), then the app.
loadConfig().then(async () => {
  document.title = config.productName;
  const { default: App } = await import("./App");
  createRoot(document.getElementById("root")!).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
});
