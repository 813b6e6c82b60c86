// Where the front end finds paykey, fixed at build time (Vite's VITE_* variables):
//   VITE_API_URL           the stack's API (template output ApiUrl); default "/api" (the local stack)
//   VITE_USER_POOL_ID      the stack's Cognito user pool; unset: the local stack's Cognito
//   VITE_USER_POOL_CLIENT_ID  its app client
//   VITE_PRODUCT_URL       the API being sold, for the "Call the API" button; default "/product/hello"
export const config = {
  apiUrl: (import.meta.env.VITE_API_URL as string | undefined)?.replace(/\/$/, "") || "/api",
  userPoolId: import.meta.env.VITE_USER_POOL_ID as string | undefined,
  clientId: import.meta.env.VITE_USER_POOL_CLIENT_ID as string | undefined,
  productUrl: (import.meta.env.VITE_PRODUCT_URL as string | undefined) || "/product/hello",
};
export const localCognito = !config.userPoolId;
