import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the local stack's routes (cargo run -p paykey-local, port 8787).
const local = process.env.PAYKEY_LOCAL_URL || "http://127.0.0.1:8787";
export default defineConfig({
  plugins: [react()],
  // amazon-cognito-identity-js (the deployed user pool's sign-in) reads Node's `global`; without
  // this every call to the pool fails in the browser with "global is not defined".
  define: { global: "globalThis" },
  build: { outDir: "dist", sourcemap: false },
  server: {
    proxy: Object.fromEntries(["/api", "/cognito", "/stripe", "/product"].map((p) => [p, { target: local, changeOrigin: false }])),
  },
});
