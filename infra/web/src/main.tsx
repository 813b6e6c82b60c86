import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { config, loadConfig, misconfigured } from "./config";
import "./styles.css";

// The configuration first (config.json may name the user pool), then the app.
loadConfig().then(async () => {
  document.title = config.productName;
  const root = createRoot(document.getElementById("root")!);
  if (misconfigured()) {
    root.render(
      <main id="misconfigured">
        <h1>Not configured</h1>
        <p>This build names no Cognito user pool: add a config.json beside index.html (see README, “Configure and host it”).</p>
      </main>,
    );
    return;
  }
  const { default: App } = await import("./App");
  root.render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
});
