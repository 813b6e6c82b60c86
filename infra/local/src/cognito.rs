//! A local Cognito user pool: sign-up and sign-in with a username and password, RS256 ID
//! tokens shaped like Cognito's (`cognito:username`, `sub`, `token_use`, `iss`, `aud`, `exp`,
//! custom attributes), a JWKS, and the admin attribute API behind paykey's `UserDirectory`
//! port. Passwords are stored as salted PBKDF2-HMAC-SHA256 hashes (100,000 rounds).
//!
//! A password this process has already checked (at sign-up or a successful sign-in) is
//! checked again by an HMAC under a key made at start and kept only in memory, as Apache's
//! `mod_authn_socache` does for slow hashes: signing in right after signing up costs one
//! PBKDF2, not two. A password that does not match the remembered one still runs the full
//! PBKDF2, so guessing costs what it did; nothing of this is written to the data file.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use aws_lc_rs::{hmac, pbkdf2, rsa::KeySize};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use paykey::domain::{BackendError, CustomerId, Plan, UserName, UserProfile};
use paykey::ports::UserDirectory;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const PBKDF2_ROUNDS: u32 = 100_000;
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Cognito's default refresh token validity (30 days).
pub const REFRESH_LIFETIME_SECS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalUser {
    pub sub: String,
    pub email: Option<String>,
    salt: String,
    password_hash: String,
    pub plan_type: Option<String>,
    pub stripe_customer_id: Option<String>,
}

/// What is persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub pool_id: String,
    pub client_id: String,
    /// PKCS#8 DER of the signing key, base64.
    pub signing_key: String,
    pub kid: String,
    pub users: BTreeMap<String, LocalUser>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("{0}")]
    InvalidParameter(String),
    #[error("User already exists")]
    UsernameExists,
    #[error("Incorrect username or password.")]
    NotAuthorized,
}

struct Inner {
    snapshot: PoolSnapshot,
    /// For the JWKS (the public half).
    key: RsaKeyPair,
    /// The same key, for `jsonwebtoken`.
    signing: jsonwebtoken::EncodingKey,
    /// Passwords checked by this process: user name → HMAC(`remembered_key`, sub, stored hash,
    /// password). In memory only.
    remembered: HashMap<String, hmac::Tag>,
    remembered_key: hmac::Key,
    /// PBKDF2 derivations and verifications run, for tests and diagnostics.
    pbkdf2_runs: u64,
}

impl Inner {
    fn new(snapshot: PoolSnapshot, key: RsaKeyPair, signing: jsonwebtoken::EncodingKey) -> Result<Self, String> {
        let remembered_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| "no randomness for the password cache key".to_string())?;
        Ok(Self { snapshot, key, signing, remembered: HashMap::new(), remembered_key, pbkdf2_runs: 0 })
    }
}

/// What binds a remembered password to the account record it was checked against: a changed
/// hash or another `sub` under the same name does not match.
fn remembered_message(user: &LocalUser, password: &str) -> Vec<u8> {
    [user.sub.as_bytes(), b"\0", user.password_hash.as_bytes(), b"\0", password.as_bytes()].concat()
}

/// jsonwebtoken reads an RSA private key as PKCS#1 DER or as PEM; aws-lc-rs writes PKCS#8
/// DER, so it goes through PEM.
fn encoding_key(pkcs8_der: &[u8]) -> Result<jsonwebtoken::EncodingKey, String> {
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8_der));
    jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("the signing key: {e}"))
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct LocalCognito {
    inner: Arc<Mutex<Inner>>,
    issuer: String,
}

fn hash_password(salt: &[u8], password: &str) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ROUNDS).expect("nonzero"),
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

impl LocalCognito {
    /// A new pool with a fresh 2048-bit signing key.
    pub fn create(issuer_base: &str) -> Result<Self, String> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| "could not generate an RSA key".to_string())?;
        let der = key.as_der().map_err(|_| "could not encode the RSA key".to_string())?;
        let signing = encoding_key(der.as_ref())?;
        let snapshot = PoolSnapshot {
            pool_id: "local_paykey".into(),
            client_id: format!("paykeylocal{}", &uuid::Uuid::new_v4().simple().to_string()[..14]),
            signing_key: STANDARD.encode(der.as_ref()),
            kid: uuid::Uuid::new_v4().simple().to_string(),
            users: BTreeMap::new(),
        };
        Ok(Self {
            issuer: format!("{issuer_base}/{}", snapshot.pool_id),
            inner: Arc::new(Mutex::new(Inner::new(snapshot, key, signing)?)),
        })
    }

    /// A pool restored from its snapshot.
    pub fn restore(issuer_base: &str, snapshot: PoolSnapshot) -> Result<Self, String> {
        let der =
            STANDARD.decode(&snapshot.signing_key).map_err(|_| "cognito.signing_key is not base64".to_string())?;
        let key =
            RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("cognito.signing_key is not a PKCS#8 RSA key: {e}"))?;
        let signing = encoding_key(&der)?;
        Ok(Self {
            issuer: format!("{issuer_base}/{}", snapshot.pool_id),
            inner: Arc::new(Mutex::new(Inner::new(snapshot, key, signing)?)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        self.lock().snapshot.clone()
    }

    pub fn client_id(&self) -> String {
        self.lock().snapshot.client_id.clone()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many PBKDF2 derivations and verifications this pool has run.
    pub fn pbkdf2_runs(&self) -> u64 {
        self.lock().pbkdf2_runs
    }

    pub fn sign_up(&self, username: &str, password: &str, email: Option<&str>) -> Result<(), AuthError> {
        let name = UserName::parse(username).map_err(|e| AuthError::InvalidParameter(e.to_string()))?;
        if password.chars().count() < 8 {
            return Err(AuthError::InvalidParameter(
                "Password did not conform with policy: Password not long enough (8 characters at least)".into(),
            ));
        }
        if self.lock().snapshot.users.contains_key(name.as_str()) {
            return Err(AuthError::UsernameExists);
        }
        // PBKDF2 (100,000 rounds) runs without the pool's lock: sign-ups and sign-ins of
        // other users go on meanwhile.
        let mut salt = [0u8; 16];
        SystemRandom::new().fill(&mut salt).map_err(|_| AuthError::InvalidParameter("no randomness".into()))?;
        let password_hash = STANDARD.encode(hash_password(&salt, password));
        let user = LocalUser {
            sub: uuid::Uuid::new_v4().to_string(),
            email: email.filter(|e| !e.is_empty()).map(str::to_string),
            salt: STANDARD.encode(salt),
            password_hash,
            plan_type: None,
            stripe_customer_id: None,
        };
        let mut inner = self.lock();
        inner.pbkdf2_runs += 1;
        // checked again: another sign-up of the same name may have finished meanwhile
        if inner.snapshot.users.contains_key(name.as_str()) {
            return Err(AuthError::UsernameExists);
        }
        let tag = hmac::sign(&inner.remembered_key, &remembered_message(&user, password));
        inner.remembered.insert(name.to_string(), tag);
        inner.snapshot.users.insert(name.to_string(), user);
        Ok(())
    }

    /// Checks the password and issues an ID token valid for an hour and a refresh token valid
    /// for 30 days.
    pub fn sign_in(&self, username: &str, password: &str, now: i64) -> Result<Tokens, AuthError> {
        let (checked, known) = {
            let inner = self.lock();
            let user = inner.snapshot.users.get(username).cloned().ok_or(AuthError::NotAuthorized)?;
            // an HMAC takes microseconds: checked under the lock (constant-time comparison)
            let message = remembered_message(&user, password);
            let known = inner
                .remembered
                .get(username)
                .is_some_and(|tag| hmac::verify(&inner.remembered_key, &message, tag.as_ref()).is_ok());
            (user, known)
        };
        if !known {
            let salt = STANDARD.decode(&checked.salt).map_err(|_| AuthError::NotAuthorized)?;
            let expected = STANDARD.decode(&checked.password_hash).map_err(|_| AuthError::NotAuthorized)?;
            // verified without the pool's lock (see sign_up)
            let verified = pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(PBKDF2_ROUNDS).expect("nonzero"),
                &salt,
                password.as_bytes(),
                &expected,
            );
            let mut inner = self.lock();
            inner.pbkdf2_runs += 1;
            verified.map_err(|_| AuthError::NotAuthorized)?;
            let tag = hmac::sign(&inner.remembered_key, &remembered_message(&checked, password));
            inner.remembered.insert(username.to_string(), tag);
        }
        let inner = self.lock();
        // the attributes as they are now (fulfilment may have changed them during the hash)
        let user = inner
            .snapshot
            .users
            .get(username)
            .filter(|u| u.sub == checked.sub && u.password_hash == checked.password_hash)
            .ok_or(AuthError::NotAuthorized)?;
        let id_token = self.id_token(&inner, username, user, now)?;
        let refresh = json!({
            "sub": user.sub, "cognito:username": username, "token_use": "refresh", "iss": self.issuer,
            "aud": inner.snapshot.client_id, "iat": now, "exp": now + REFRESH_LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let refresh_token =
            sign_jwt(&inner.signing, &inner.snapshot.kid, &refresh).map_err(|_| AuthError::NotAuthorized)?;
        Ok(Tokens { id_token, refresh_token })
    }

    /// A new ID token for a refresh token this pool issued, with the user's attributes as they
    /// are now (`REFRESH_TOKEN_AUTH`). A user deleted and signed up again under the same name
    /// (another `sub`) is refused.
    pub fn refresh(&self, refresh_token: &str, now: i64) -> Result<String, AuthError> {
        let (jwks, client_id) = (self.jwks(), self.client_id());
        let claims = verify_token(refresh_token, &jwks, &client_id, &self.issuer, now, "refresh")
            .map_err(|_| AuthError::NotAuthorized)?;
        let name = claims.get("cognito:username").and_then(Value::as_str).ok_or(AuthError::NotAuthorized)?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or(AuthError::NotAuthorized)?;
        let inner = self.lock();
        let user = inner.snapshot.users.get(name).filter(|u| u.sub == sub).ok_or(AuthError::NotAuthorized)?;
        self.id_token(&inner, name, user, now)
    }

    fn id_token(&self, inner: &Inner, username: &str, user: &LocalUser, now: i64) -> Result<String, AuthError> {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(user.sub));
        claims.insert("cognito:username".into(), json!(username));
        claims.insert("token_use".into(), json!("id"));
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(inner.snapshot.client_id));
        claims.insert("auth_time".into(), json!(now));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + TOKEN_LIFETIME_SECS));
        claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        if let Some(e) = &user.email {
            claims.insert("email".into(), json!(e));
        }
        if let Some(p) = &user.plan_type {
            claims.insert("custom:plan_type".into(), json!(p));
        }
        if let Some(c) = &user.stripe_customer_id {
            claims.insert("custom:stripe_customer_id".into(), json!(c));
        }
        sign_jwt(&inner.signing, &inner.snapshot.kid, &Value::Object(claims)).map_err(|_| AuthError::NotAuthorized)
    }

    /// The JSON Web Key Set with the pool's public key.
    pub fn jwks(&self) -> Value {
        let inner = self.lock();
        let public = inner.key.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": inner.snapshot.kid, "n": n, "e": e}]})
    }
}

/// An RS256 JWT with `kid` in its header.
pub fn sign_jwt(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> jsonwebtoken::errors::Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key)
}

/// What a successful sign-in gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub id_token: String,
    /// An RS256 JWT with `token_use: refresh` (Cognito's are opaque); only [`LocalCognito::refresh`]
    /// takes it: the authorizer refuses it (`token_use` is not `id`).
    pub refresh_token: String,
}

/// Why a bearer token was refused (API Gateway answers 401 for all of them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("wrong audience")]
    Audience,
    #[error("wrong issuer")]
    Issuer,
    #[error("not an ID token")]
    TokenUse,
}

/// Verifies an ID token the way API Gateway's Cognito authorizer does: RS256 signature by a
/// key of the JWKS, `exp` in the future, `aud` the app client, `iss` the pool, `token_use` id.
/// Returns the claims, every value as a string (as API Gateway passes them to the Lambda).
pub fn verify_id_token(
    token: &str,
    jwks: &Value,
    audience: &str,
    issuer: &str,
    now: i64,
) -> Result<Map<String, Value>, TokenError> {
    verify_token(token, jwks, audience, issuer, now, "id")
}

fn verify_token(
    token: &str,
    jwks: &Value,
    audience: &str,
    issuer: &str,
    now: i64,
    token_use: &str,
) -> Result<Map<String, Value>, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|_| TokenError::UnknownKey)?;
    let jwk = header.kid.as_deref().and_then(|kid| set.find(kid)).ok_or(TokenError::UnknownKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::UnknownKey)?;
    // RS256 only: `alg: none` and an HS256 token "signed" with the public key are refused.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    // `exp` is compared with `now` below (the caller's clock), without leeway, as API Gateway does.
    validation.validate_exp = false;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenError::Issuer,
            ErrorKind::MissingRequiredClaim(_) => TokenError::Expired,
            _ => TokenError::Malformed,
        })?
        .claims;
    if claims.get("exp").and_then(Value::as_i64).is_none_or(|exp| exp <= now) {
        return Err(TokenError::Expired);
    }
    if claims.get("token_use").and_then(Value::as_str) != Some(token_use) {
        return Err(TokenError::TokenUse);
    }
    Ok(claims
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, Value::String(s))
        })
        .collect())
}

const SERVICE: &str = "cognito-idp(local)";

impl UserDirectory for LocalCognito {
    async fn get_user(&self, user: &UserName) -> paykey::ports::Result<Option<UserProfile>> {
        let inner = self.lock();
        let Some(u) = inner.snapshot.users.get(user.as_str()) else {
            return Ok(None);
        };
        Ok(Some(UserProfile {
            sub: Some(
                paykey::domain::UserId::parse(&u.sub)
                    .map_err(|e| BackendError::new(SERVICE, "AdminGetUser", e.to_string()))?,
            ),
            plan: u.plan_type.as_deref().and_then(|p| p.parse().ok()),
            customer_id: u
                .stripe_customer_id
                .as_deref()
                .map(CustomerId::parse)
                .transpose()
                .map_err(|e| BackendError::new(SERVICE, "AdminGetUser", e.to_string()))?,
        }))
    }

    async fn find_by_customer(&self, customer: &CustomerId) -> paykey::ports::Result<Option<UserName>> {
        let inner = self.lock();
        inner
            .snapshot
            .users
            .iter()
            .find(|(_, u)| u.stripe_customer_id.as_deref() == Some(customer.as_str()))
            .map(|(name, _)| UserName::parse(name).map_err(|e| BackendError::new(SERVICE, "ListUsers", e.to_string())))
            .transpose()
    }

    async fn set_plan(&self, user: &UserName, plan: Plan, customer: Option<&CustomerId>) -> paykey::ports::Result<()> {
        let mut inner = self.lock();
        let Some(u) = inner.snapshot.users.get_mut(user.as_str()) else {
            return Err(BackendError::new(
                SERVICE,
                "AdminUpdateUserAttributes",
                "UserNotFoundException: User does not exist.",
            ));
        };
        u.plan_type = Some(plan.as_str().to_string());
        if let Some(c) = customer {
            u.stripe_customer_id = Some(c.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> LocalCognito {
        let p = LocalCognito::create("http://127.0.0.1:1").unwrap();
        p.sign_up("alice", "correct horse", Some("alice@example.com")).unwrap();
        p
    }

    #[test]
    fn a_signed_in_users_token_verifies_like_api_gateway_checks_it() {
        let p = pool();
        let now = 1_800_000_000;
        let t = p.sign_in("alice", "correct horse", now).unwrap().id_token;
        let claims = verify_id_token(&t, &p.jwks(), &p.client_id(), p.issuer(), now + 10).unwrap();
        assert_eq!(claims["cognito:username"], "alice");
        assert_eq!(claims["token_use"], "id");
        assert_eq!(claims["exp"], (now + 3600).to_string(), "claims are strings, as API Gateway passes them");
    }

    #[test]
    fn expired_forged_foreign_and_wrong_audience_tokens_are_refused() {
        let p = pool();
        let now = 1_800_000_000;
        let t = p.sign_in("alice", "correct horse", now).unwrap().id_token;
        let (jwks, aud, iss) = (p.jwks(), p.client_id(), p.issuer().to_string());
        assert_eq!(verify_id_token(&t, &jwks, &aud, &iss, now + 3600), Err(TokenError::Expired));
        assert_eq!(verify_id_token(&t, &jwks, "other-client", &iss, now), Err(TokenError::Audience));
        assert_eq!(verify_id_token(&t, &jwks, &aud, "https://elsewhere", now), Err(TokenError::Issuer));
        // payload swapped for one that says bob: the signature no longer matches
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD
            .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap().replace("alice", "bob"));
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify_id_token(&forged, &jwks, &aud, &iss, now), Err(TokenError::BadSignature));
        // signed by another pool's key
        let other = LocalCognito::create("http://127.0.0.1:1").unwrap();
        other.sign_up("alice", "correct horse", None).unwrap();
        let foreign = other.sign_in("alice", "correct horse", now).unwrap().id_token;
        assert_eq!(verify_id_token(&foreign, &jwks, &aud, &iss, now), Err(TokenError::UnknownKey));
        assert_eq!(verify_id_token("not.a.token", &jwks, &aud, &iss, now), Err(TokenError::Malformed));
        // `alg: none`, and HS256 with the public key's modulus as the shared secret
        let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
        let unsigned_header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": kid, "typ": "JWT"}).to_string());
        let none = format!("{unsigned_header}.{}.", parts[1]);
        assert_eq!(verify_id_token(&none, &jwks, &aud, &iss, now), Err(TokenError::Malformed));
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(kid);
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let secret = jwks["keys"][0]["n"].as_str().unwrap().as_bytes().to_vec();
        let confused = jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(verify_id_token(&confused, &jwks, &aud, &iss, now), Err(TokenError::Malformed));
    }

    #[test]
    fn sign_in_needs_the_right_password_and_sign_up_a_new_name() {
        let p = pool();
        assert_eq!(p.sign_in("alice", "wrong password", 0), Err(AuthError::NotAuthorized));
        assert_eq!(p.sign_in("nobody", "correct horse", 0), Err(AuthError::NotAuthorized));
        assert_eq!(p.sign_up("alice", "another pass", None), Err(AuthError::UsernameExists));
        assert!(matches!(p.sign_up("bob", "short", None), Err(AuthError::InvalidParameter(_))));
        assert!(matches!(p.sign_up("bad name", "long enough", None), Err(AuthError::InvalidParameter(_))));
    }

    #[test]
    fn a_checked_password_is_not_hashed_again_and_a_wrong_one_still_is() {
        let p = pool();
        assert_eq!(p.pbkdf2_runs(), 1, "sign-up hashes once");
        assert!(p.sign_in("alice", "correct horse", 0).is_ok());
        assert_eq!(p.pbkdf2_runs(), 1, "signing in after signing up needs no second PBKDF2");
        assert_eq!(p.sign_in("alice", "correct horsf", 0), Err(AuthError::NotAuthorized));
        assert_eq!(p.pbkdf2_runs(), 2, "a wrong password costs a full PBKDF2");
        assert!(p.sign_in("alice", "correct horse", 0).is_ok());
        assert_eq!(p.pbkdf2_runs(), 2);
        // a restarted process remembers nothing: the first sign-in hashes, the next does not
        let q = LocalCognito::restore("http://127.0.0.1:1", p.snapshot()).unwrap();
        assert_eq!(q.sign_in("alice", "wrong password", 0), Err(AuthError::NotAuthorized));
        assert!(q.sign_in("alice", "correct horse", 0).is_ok());
        assert!(q.sign_in("alice", "correct horse", 0).is_ok());
        assert_eq!(q.pbkdf2_runs(), 2);
        let json = serde_json::to_string(&q.snapshot()).unwrap();
        assert!(!json.contains("remembered"), "the cache is not persisted");
    }

    #[test]
    fn a_restored_pool_keeps_users_and_key() {
        let p = pool();
        let t = p.sign_in("alice", "correct horse", 100).unwrap().id_token;
        let q = LocalCognito::restore("http://127.0.0.1:1", p.snapshot()).unwrap();
        assert!(verify_id_token(&t, &q.jwks(), &q.client_id(), q.issuer(), 200).is_ok());
        assert!(q.sign_in("alice", "correct horse", 100).is_ok());
    }

    #[test]
    fn a_refresh_token_gives_an_id_token_with_the_attributes_as_they_are_now() {
        let p = pool();
        let now = 1_800_000_000;
        let t = p.sign_in("alice", "correct horse", now).unwrap();
        let (jwks, aud, iss) = (p.jwks(), p.client_id(), p.issuer().to_string());
        let first = verify_id_token(&t.id_token, &jwks, &aud, &iss, now).unwrap();
        assert!(first.get("custom:plan_type").is_none());
        // fulfilment writes the plan (the admin API); the old ID token still says nothing
        p.lock().snapshot.users.get_mut("alice").unwrap().plan_type = Some("PRO".into());
        let fresh = p.refresh(&t.refresh_token, now + 7200).unwrap();
        let claims = verify_id_token(&fresh, &jwks, &aud, &iss, now + 7200).unwrap();
        assert_eq!(claims["custom:plan_type"], "PRO");
        assert_eq!(claims["sub"], first["sub"]);
        // the refresh token is not an ID token: the authorizer refuses it
        assert_eq!(verify_id_token(&t.refresh_token, &jwks, &aud, &iss, now), Err(TokenError::TokenUse));
        // nor is an ID token a refresh token; expired, forged and another pool's are refused
        assert_eq!(p.refresh(&t.id_token, now), Err(AuthError::NotAuthorized));
        assert_eq!(p.refresh(&t.refresh_token, now + REFRESH_LIFETIME_SECS), Err(AuthError::NotAuthorized));
        let other = LocalCognito::create("http://127.0.0.1:1").unwrap();
        other.sign_up("alice", "correct horse", None).unwrap();
        let foreign = other.sign_in("alice", "correct horse", now).unwrap().refresh_token;
        assert_eq!(p.refresh(&foreign, now), Err(AuthError::NotAuthorized));
        // survives a restart (the key is in the data file); not for a new user of the same name
        let q = LocalCognito::restore("http://127.0.0.1:1", p.snapshot()).unwrap();
        assert!(q.refresh(&t.refresh_token, now).is_ok());
        q.lock().snapshot.users.get_mut("alice").unwrap().sub = "another-sub".into();
        assert_eq!(q.refresh(&t.refresh_token, now), Err(AuthError::NotAuthorized));
    }
}
