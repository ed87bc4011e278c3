//! Authentication and authorization for `wharf serve`, on when the configuration has `[auth]`.
//!
//! - Who: a request carries basic credentials (checked against the htpasswd file, see
//!   [`users`]), a bearer token (a JWT from wharf's own token service or from an external one it
//!   trusts, see [`jwt`]), or nothing (anonymous).
//! - What: [`rules`] say which users and groups may pull, push and delete where; a token
//!   carries the actions its service granted, for the repositories it was asked for.
//! - Refusals: a caller without credentials (or whose token lacks a scope it could get) is
//!   answered 401 `UNAUTHORIZED` with the challenge that tells it where to authenticate; an
//!   authenticated caller the rules refuse gets 403 `DENIED`; too many failed logins 429.
//!
//! Verified tokens and passwords are remembered (tokens until they expire, passwords for
//! `password_cache`), so neither ECDSA nor bcrypt runs on every request.

pub mod jwt;
pub mod rules;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

pub use rules::{Action, Caller, Rules};
use users::{LoginError, Users};

use crate::config::{AuthConfig, AuthMode};

/// Authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file.
    #[error(transparent)]
    Users(#[from] users::UsersError),
    /// A signing or trusted key.
    #[error(transparent)]
    Key(#[from] jwt::JwtError),
}

/// Why a request is refused.
#[derive(Debug)]
pub enum Denial {
    /// No or bad credentials, or a token without the scope: 401 with this challenge.
    Unauthorized {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// Said to the client.
        detail: String,
    },
    /// Authenticated, but the rules refuse it: 403.
    Denied(String),
    /// Too many failed logins: 429 with `Retry-After`.
    Throttled(Duration),
}

/// Who is calling, as far as the request shows.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The user name; `None` for an anonymous client (or an anonymous token).
    pub user: Option<Arc<str>>,
    /// What the bearer token grants, when the request carried one.
    pub token: Option<Arc<Grants>>,
}

impl Identity {
    /// The name audit lines use.
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }

    fn caller(&self) -> Caller<'_> {
        match &self.user {
            Some(u) => Caller::User(u),
            None => Caller::Anonymous,
        }
    }
}

/// A verified token's access claim.
#[derive(Debug)]
pub struct Grants {
    /// `(type, name) → actions`.
    access: Vec<(String, String, Vec<Action>)>,
    catalog: bool,
    /// When it expires (seconds since the epoch).
    exp: i64,
    /// The token's subject; `None` for an anonymous token.
    user: Option<Arc<str>>,
}

impl Grants {
    fn from_claims(claims: &Value) -> Grants {
        let mut access = Vec::new();
        let mut catalog = false;
        for a in claims["access"].as_array().into_iter().flatten() {
            let kind = a["type"].as_str().unwrap_or_default();
            let name = a["name"].as_str().unwrap_or_default();
            let actions: Vec<&str> = a["actions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if kind == "registry" && name == "catalog" && actions.contains(&"*") {
                catalog = true;
            }
            access.push((
                kind.to_owned(),
                name.to_owned(),
                actions.iter().flat_map(|a| Action::parse(a)).collect(),
            ));
        }
        Grants {
            access,
            catalog,
            exp: claims["exp"].as_i64().unwrap_or(0),
            user: claims["sub"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(Arc::from),
        }
    }

    fn allows(&self, repo: &str, action: Action) -> bool {
        self.access
            .iter()
            .any(|(k, n, a)| k == "repository" && n == repo && a.contains(&action))
    }
}

/// A token answer: the access token, its lifetime, and a refresh token when one was asked for.
#[derive(Debug)]
pub struct Issued {
    /// The signed access token.
    pub token: String,
    /// Seconds it is valid for.
    pub expires_in: u64,
    /// RFC 3339 time it was issued at.
    pub issued_at: String,
    /// A refresh token (for `offline_token=true` or `access_type=offline`).
    pub refresh_token: Option<String>,
    /// The scopes granted, space-separated (OAuth2's `scope`).
    pub scope: String,
}

/// Tokens remembered at most; beyond it the memory is emptied.
const TOKEN_CACHE: usize = 10_000;

/// The registry's authentication and access rules.
pub struct Auth {
    mode: AuthMode,
    users: Option<Arc<Users>>,
    rules: Rules,
    signer: Option<jwt::Signer>,
    verifier: Option<jwt::Verifier>,
    realm: Option<String>,
    service: String,
    issuer: String,
    token_expiry: Duration,
    refresh_expiry: Duration,
    https: bool,
    tokens: RwLock<HashMap<String, Arc<Grants>>>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Auth {
    /// Reads the users file and keys `config` names (generating the signing key under
    /// `root/auth/` the first time). `https`: whether the server speaks TLS, for realms.
    pub fn open(config: &AuthConfig, root: &Path, https: bool) -> Result<Auth, AuthError> {
        let users = match &config.htpasswd {
            Some(p) => Some(Users::open(p, config.password_cache)?),
            None => None,
        };
        let (signer, verifier) = if config.external() {
            let v = jwt::Verifier::external(
                config.trust_certificates.as_deref(),
                config.trust_jwks.as_deref(),
            )?;
            (None, Some(v))
        } else if config.mode == AuthMode::Token {
            let (path, generate) = match &config.token_key {
                Some(p) => (p.clone(), false),
                None => (root.join("auth/token-key.pem"), true),
            };
            let s = jwt::Signer::load_or_generate(&path, generate)?;
            let v = s.verifier();
            (Some(s), Some(v))
        } else {
            (None, None)
        };
        Ok(Auth {
            mode: config.mode,
            users,
            rules: Rules::new(&config.rules, &config.groups),
            signer,
            verifier,
            realm: config.realm.clone(),
            service: config.service.clone(),
            issuer: config.issuer.clone(),
            token_expiry: config.token_expiry,
            refresh_expiry: config.refresh_expiry,
            https,
            tokens: RwLock::new(HashMap::new()),
        })
    }

    /// The service name tokens are for.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether this registry serves `/token` itself.
    pub fn issues_tokens(&self) -> bool {
        self.signer.is_some()
    }

    /// Who sent a request with this `Authorization` header from `client`.
    pub async fn identify(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
        host: Option<&str>,
    ) -> Result<Identity, Denial> {
        let Some(value) = authorization else {
            return Ok(Identity::default());
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let user = self.check_basic(rest.trim(), client, host).await?;
            return Ok(Identity {
                user: Some(Arc::from(user)),
                token: None,
            });
        }
        if scheme.eq_ignore_ascii_case("bearer") && self.verifier.is_some() {
            return self.check_bearer(rest.trim(), host);
        }
        Err(self.unauthorized(host, None, "unsupported Authorization scheme"))
    }

    /// Checks basic credentials; the user's name when they are right.
    pub async fn check_basic(
        &self,
        encoded: &str,
        client: Option<IpAddr>,
        host: Option<&str>,
    ) -> Result<String, Denial> {
        let bad = |detail: &str| self.unauthorized(host, None, detail);
        if self.users.is_none() {
            return Err(bad("this registry takes tokens from its token server"));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad("basic credentials are not base64 of user:password"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("basic credentials are not user:password"))?;
        self.login(user, password, client, host).await
    }

    /// Checks a user name and password (basic credentials, or the OAuth2 password grant);
    /// the user's name when they are right.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
        host: Option<&str>,
    ) -> Result<String, Denial> {
        let Some(users) = &self.users else {
            return Err(self.unauthorized(
                host,
                None,
                "this registry takes tokens from its token server",
            ));
        };
        match users.check(user, password, client).await {
            Ok(()) => Ok(user.to_owned()),
            Err(e) => {
                let reason = match e {
                    LoginError::Invalid => "wrong user or password",
                    LoginError::Throttled(_) => "throttled after repeated failures",
                };
                tracing::warn!(
                    target: "wharf::audit",
                    action = "login failed",
                    user,
                    client = %client.map(|c| c.to_string()).unwrap_or_default(),
                    reason,
                    "audit"
                );
                match e {
                    LoginError::Invalid => {
                        Err(self.unauthorized(host, None, "incorrect username or password"))
                    }
                    LoginError::Throttled(wait) => Err(Denial::Throttled(wait)),
                }
            }
        }
    }

    fn check_bearer(&self, token: &str, host: Option<&str>) -> Result<Identity, Denial> {
        let now = now();
        let cached = self
            .tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned();
        let grants = match cached {
            Some(g) if g.exp > now => g,
            _ => {
                let verifier = self.verifier.as_ref().ok_or_else(|| {
                    self.unauthorized(host, None, "this registry does not take tokens")
                })?;
                let claims = verifier
                    .verify(token, &self.issuer, &self.service, now)
                    .map_err(|e| self.invalid_token(host, &e.to_string()))?;
                if claims.get("wharf_refresh").is_some() {
                    return Err(self.invalid_token(host, "a refresh token is not an access token"));
                }
                let grants = Arc::new(Grants::from_claims(&claims));
                let mut cache = self
                    .tokens
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= TOKEN_CACHE {
                    cache.retain(|_, g| g.exp > now);
                    if cache.len() >= TOKEN_CACHE {
                        cache.clear();
                    }
                }
                cache.insert(token.to_owned(), grants.clone());
                grants
            }
        };
        Ok(Identity {
            user: grants.user.clone(),
            token: Some(grants),
        })
    }

    fn realm(&self, host: Option<&str>) -> String {
        if let Some(r) = &self.realm {
            return r.clone();
        }
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/token", host.unwrap_or("localhost"))
    }

    fn challenge(&self, host: Option<&str>, scope: Option<&str>, error: Option<&str>) -> String {
        match self.mode {
            AuthMode::Basic => "Basic realm=\"wharf\"".to_owned(),
            AuthMode::Token => {
                let mut c = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    self.realm(host),
                    self.service
                );
                if let Some(s) = scope {
                    c.push_str(&format!(",scope=\"{s}\""));
                }
                if let Some(e) = error {
                    c.push_str(&format!(",error=\"{e}\""));
                }
                c
            }
        }
    }

    fn unauthorized(&self, host: Option<&str>, scope: Option<&str>, detail: &str) -> Denial {
        Denial::Unauthorized {
            challenge: self.challenge(host, scope, None),
            detail: detail.to_owned(),
        }
    }

    fn invalid_token(&self, host: Option<&str>, detail: &str) -> Denial {
        Denial::Unauthorized {
            challenge: self.challenge(host, None, Some("invalid_token")),
            detail: detail.to_owned(),
        }
    }

    /// Whether `who` may do `action` in `repo`.
    pub fn allows(&self, who: &Identity, repo: &str, action: Action) -> bool {
        match &who.token {
            Some(g) => g.allows(repo, action),
            None => self.rules.allows(who.caller(), repo, action),
        }
    }

    /// Whether `who` may see `repo` in listings: pull by the rules for the caller's user (a
    /// token's scopes name only the repositories it was asked for), or, with an external
    /// token server, a catalog grant.
    pub fn may_list(&self, who: &Identity, repo: &str) -> bool {
        match &who.token {
            Some(g) if self.signer.is_none() => g.catalog || g.allows(repo, Action::Pull),
            _ => self.rules.allows(who.caller(), repo, Action::Pull),
        }
    }

    /// Lets the request through if `who` may do `action` in `repo`, else says how to refuse.
    /// A challenge asks for `also` too (a mount's source, which the token needs to mount
    /// from it).
    pub fn require(
        &self,
        who: &Identity,
        repo: &str,
        action: Action,
        host: Option<&str>,
        also: Option<&str>,
    ) -> Result<(), Denial> {
        if self.allows(who, repo, action) {
            return Ok(());
        }
        let mut scope = format!(
            "repository:{repo}:{}",
            match action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
                Action::Delete => "delete",
            }
        );
        if let Some(extra) = also {
            scope.push(' ');
            scope.push_str(extra);
        }
        let detail = format!("{} access to {repo} needs authorization", action.as_str());
        match (&who.user, &who.token) {
            (None, _) => Err(self.unauthorized(host, Some(&scope), &detail)),
            // A token without the scope: another token may carry it, unless the rules would
            // refuse it to this user anyway.
            (Some(user), Some(_))
                if self.signer.is_none() || self.rules.allows(Caller::User(user), repo, action) =>
            {
                Err(Denial::Unauthorized {
                    challenge: self.challenge(host, Some(&scope), Some("insufficient_scope")),
                    detail,
                })
            }
            (Some(user), _) => Err(Denial::Denied(format!(
                "{user} may not {} in {repo}",
                action.as_str()
            ))),
        }
    }

    /// `/v2/` and listings: anyone with valid credentials or a token passes; a client without
    /// either is challenged unless some repositories are public (`scope` names what it asks).
    pub fn require_login(
        &self,
        who: &Identity,
        host: Option<&str>,
        scope: Option<&str>,
    ) -> Result<(), Denial> {
        let public = scope.is_some() && self.rules.any_anonymous();
        if who.user.is_some() || who.token.is_some() || public {
            return Ok(());
        }
        Err(self.unauthorized(host, scope, "authentication required"))
    }

    /// The catalog: as [`Auth::require_login`], and a token must carry `registry:catalog:*`.
    pub fn require_catalog(&self, who: &Identity, host: Option<&str>) -> Result<(), Denial> {
        const SCOPE: &str = "registry:catalog:*";
        self.require_login(who, host, Some(SCOPE))?;
        match &who.token {
            Some(g) if !g.catalog => Err(Denial::Unauthorized {
                challenge: self.challenge(host, Some(SCOPE), Some("insufficient_scope")),
                detail: "listing the catalog needs the registry:catalog:* scope".into(),
            }),
            _ => Ok(()),
        }
    }

    /// A token for `user` (or an anonymous one) carrying what the rules grant of `scopes`
    /// (Docker's `type:name:actions`), with a refresh token when `offline`.
    pub fn issue(
        &self,
        user: Option<&str>,
        scopes: &[String],
        offline: bool,
    ) -> Result<Issued, jwt::JwtError> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| jwt::JwtError::Token("this registry issues no tokens".into()))?;
        let caller = match user {
            Some(u) => Caller::User(u),
            None => Caller::Anonymous,
        };
        let mut access: Vec<Value> = Vec::new();
        let mut granted_scopes = Vec::new();
        for scope in scopes.iter().flat_map(|s| s.split(' ')) {
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let granted: Vec<&str> = match kind {
                "repository" => Action::ALL
                    .into_iter()
                    .filter(|a| {
                        actions.split(',').any(|x| x == a.as_str() || x == "*")
                            && self.rules.allows(caller, name, *a)
                    })
                    .map(Action::as_str)
                    .collect(),
                "registry"
                    if name == "catalog"
                        && actions.split(',').any(|x| x == "*")
                        && (user.is_some() || self.rules.any_anonymous()) =>
                {
                    vec!["*"]
                }
                _ => Vec::new(),
            };
            if !granted.is_empty() {
                granted_scopes.push(format!("{kind}:{name}:{}", granted.join(",")));
            }
            access.push(json!({"type": kind, "name": name, "actions": granted}));
        }
        let now = now();
        let expires = i64::try_from(self.token_expiry.as_secs()).unwrap_or(i64::MAX);
        let claims = json!({
            "iss": self.issuer,
            "sub": user.unwrap_or_default(),
            "aud": self.service,
            "exp": now.saturating_add(expires),
            "nbf": now - 1,
            "iat": now,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "access": access,
        });
        let token = signer.sign(&claims)?;
        let refresh_token = match (offline, user) {
            (true, Some(u)) => Some(self.refresh_token(signer, u, now)?),
            _ => None,
        };
        Ok(Issued {
            token,
            expires_in: self.token_expiry.as_secs(),
            issued_at: wharf_common::time::rfc3339(now),
            refresh_token,
            scope: granted_scopes.join(" "),
        })
    }

    /// A long-lived token that gets access tokens for `user` as long as the user's password
    /// stays what it was when it was issued.
    fn refresh_token(
        &self,
        signer: &jwt::Signer,
        user: &str,
        now: i64,
    ) -> Result<String, jwt::JwtError> {
        let expires = i64::try_from(self.refresh_expiry.as_secs()).unwrap_or(i64::MAX);
        signer.sign(&json!({
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now.saturating_add(expires),
            "iat": now,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "wharf_refresh": self.password_mark(user),
        }))
    }

    /// Ties a refresh token to the user's current password hash.
    fn password_mark(&self, user: &str) -> String {
        let hash = self
            .users
            .as_ref()
            .and_then(|u| u.hash_of(user))
            .unwrap_or_default();
        let d = ring::digest::digest(&ring::digest::SHA256, hash.as_bytes());
        hex::encode(&d.as_ref()[..8])
    }

    /// The user a refresh token was issued to, if it is still good.
    pub fn redeem(&self, refresh: &str) -> Result<String, String> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or("this registry issues no tokens")?;
        let claims = verifier
            .verify(refresh, &self.issuer, &self.service, now())
            .map_err(|e| e.to_string())?;
        let (Some(user), Some(mark)) = (claims["sub"].as_str(), claims["wharf_refresh"].as_str())
        else {
            return Err("not a refresh token".into());
        };
        let exists = self
            .users
            .as_ref()
            .is_some_and(|u| u.hash_of(user).is_some());
        if !exists || mark != self.password_mark(user) {
            return Err("the refresh token's user or password has changed".into());
        }
        Ok(user.to_owned())
    }
}
