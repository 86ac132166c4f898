//! The OpenID Connect relying party of the backend-for-frontend (AUTH.md A.1, A.4 rules 3, 4 and
//! 10), on the `openidconnect` crate: discovery (the document must name the configured issuer
//! exactly, OpenID Connect Discovery §4.3), the authorization request with PKCE S256 (RFC 7636)
//! and a nonce, always; the code exchange with the verifier; and the ID token checked by
//! `openidconnect` (signature with the provider's JWKS, its advertised algorithms, never
//! `none`; `iss` exact, `aud` containing the client id, `azp`, `exp`/`iat`, the nonce,
//! `at_hash` when present). Its HTTP goes through [`crate::fetch::send`]: rustls with the
//! system roots, no redirects followed (a redirect could point the gateway anywhere: SSRF),
//! 10 s and 1 MiB per exchange.
//!
//! The gateway keeps what [`LoginStart`] returns (state, nonce, verifier) in a sealed login
//! cookie ([`crate::seal`]), so any replica can finish the login, and calls
//! [`RelyingParty::finish_login`] from the callback after matching `state`.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdTokenClaims,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, Scope, TokenResponse,
};

/// What the relying party is.
#[derive(Clone)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the provider names itself (`FLUXLIT_OIDC_ISSUER`).
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret (`client_secret_basic`), if the client is confidential.
    pub client_secret: Option<String>,
    /// The callback URL registered at the provider, built once from the public base URL
    /// (`{public_base_url}{root_path}{api_mount}/auth/callback`), never from a request.
    pub redirect_uri: String,
    /// Scopes besides `openid` (e.g. `email`, `profile`).
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Why discovery or a login failed (messages name URLs and claims, never codes or tokens).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// A configured URL is not a URL.
    #[error("{what} {value:?} is not a URL: {reason}")]
    Url {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// The discovery document could not be had or does not fit (another issuer, bad JSON).
    #[error("OpenID discovery for {issuer} failed: {reason}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// The token endpoint refused the code or could not be reached.
    #[error("the token endpoint refused the authorization code: {0}")]
    Exchange(String),
    /// The token response has no ID token.
    #[error("the token response has no ID token (is the openid scope granted?)")]
    NoIdToken,
    /// The ID token failed a check (signature, issuer, audience, expiry, nonce, …).
    #[error("the ID token was refused: {0}")]
    IdToken(String),
}

/// The client as discovery made it: authorization endpoint set, token and userinfo endpoints
/// as discovered.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A discovered provider and this client at it.
pub struct RelyingParty {
    client: Client,
    issuer: String,
    scopes: Vec<String>,
    end_session_endpoint: Option<String>,
    /// The ID token algorithms accepted: what discovery lists, within [`ID_TOKEN_ALGS`].
    algs: Vec<CoreJwsSigningAlgorithm>,
}

/// The asymmetric algorithms an ID token may be signed with (AUTH.md A.2
/// `auth.oidc.id_token_algs`): never `none`, never HS* (a client secret is not a signing
/// key the provider alone holds).
pub const ID_TOKEN_ALGS: [&str; 4] = ["RS256", "PS256", "ES256", "EdDSA"];

fn allowed_alg(a: &CoreJwsSigningAlgorithm) -> bool {
    matches!(
        a,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
            | CoreJwsSigningAlgorithm::RsaSsaPssSha256
            | CoreJwsSigningAlgorithm::EcdsaP256Sha256
            | CoreJwsSigningAlgorithm::EdDsa
    )
}

/// Why a refresh failed: the session must end, or it may be tried again later.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider refused the refresh token (`invalid_grant`, RFC 6749 §5.2): revoked,
    /// expired or already used. The session ends.
    #[error("the provider refused the refresh token: {0}")]
    Refused(String),
    /// The provider could not be reached or answered nonsense; try again later.
    #[error("the refresh failed: {0}")]
    Failed(String),
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.issuer)
            .field("end_session_endpoint", &self.end_session_endpoint)
            .finish_non_exhaustive()
    }
}

/// The start of a login: where to send the browser, and what the callback needs back.
#[derive(Debug, Clone)]
pub struct LoginStart {
    /// The authorization request URL (302 target).
    pub url: String,
    /// The `state` value (CSRF binding of the callback).
    pub state: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier (secret until the code exchange).
    pub verifier: String,
}

/// Who logged in, from the verified ID token (no tokens in it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: String,
    /// `email`, if given.
    pub email: Option<String>,
    /// `email_verified`, if given.
    pub email_verified: Option<bool>,
    /// `name` (any language), if given.
    pub name: Option<String>,
    /// `preferred_username`, if given.
    pub preferred_username: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub exp: i64,
    /// `auth_time`, seconds since the Unix epoch, if given.
    pub auth_time: Option<i64>,
}

/// What the token endpoint returned besides the identity (kept server-side only).
#[derive(Clone)]
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<String>,
    /// The raw ID token (the `id_token_hint` of an RP-initiated logout).
    pub id_token: String,
    /// The access token's lifetime (`expires_in`, RFC 6749 §5.1), if the provider said.
    pub expires_in: Option<std::time::Duration>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([REDACTED])")
    }
}

/// The HTTP client `openidconnect` calls: [`crate::fetch::send`].
async fn http(
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, crate::fetch::FetchError> {
    crate::fetch::send(req).await
}

impl RelyingParty {
    /// Fetches the provider's discovery document (`{issuer}/.well-known/openid-configuration`)
    /// and its JWKS.
    ///
    /// # Errors
    /// [`OidcError::Url`] for an issuer or redirect URI that is not a URL;
    /// [`OidcError::Discovery`] when the document or JWKS cannot be fetched or parsed, or the
    /// document names another issuer.
    pub async fn discover(config: OidcConfig) -> Result<Self, OidcError> {
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| OidcError::Url {
            what: "oidc_issuer",
            value: config.issuer.clone(),
            reason: e.to_string(),
        })?;
        let redirect =
            RedirectUrl::new(config.redirect_uri.clone()).map_err(|e| OidcError::Url {
                what: "the callback URL",
                value: config.redirect_uri.clone(),
                reason: e.to_string(),
            })?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: config.issuer.clone(),
                reason: error_chain(&e),
            })?;
        // `end_session_endpoint` (RP-initiated logout) is not in the core metadata type.
        let end_session_endpoint = discovery_field(&config.issuer, "end_session_endpoint").await;
        let algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|a| allowed_alg(a))
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(OidcError::Discovery {
                issuer: config.issuer.clone(),
                reason: format!(
                    "id_token_signing_alg_values_supported lists none of {ID_TOKEN_ALGS:?}"
                ),
            });
        }
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id),
            config.client_secret.map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            client,
            issuer: config.issuer,
            scopes: config.scopes,
            end_session_endpoint,
            algs,
        })
    }

    /// The provider's `end_session_endpoint`, when it advertises one (RP-initiated logout).
    pub fn end_session_endpoint(&self) -> Option<&str> {
        self.end_session_endpoint.as_deref()
    }

    /// A new login: fresh random `state`, nonce and PKCE S256 verifier, and the authorization
    /// request URL carrying the challenge.
    pub fn start_login(&self) -> LoginStart {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        LoginStart {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        }
    }

    /// Redeems `code` with the PKCE `verifier` and verifies the ID token against `nonce`.
    ///
    /// # Errors
    /// [`OidcError::Exchange`] when the token endpoint refuses or cannot be reached,
    /// [`OidcError::NoIdToken`], or [`OidcError::IdToken`] naming the failed check.
    pub async fn finish_login(
        &self,
        code: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<(Identity, Tokens), OidcError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(&http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        let claims: &CoreIdTokenClaims = id_token
            .claims(
                &self
                    .client
                    .id_token_verifier()
                    .set_allowed_algs(self.algs.clone()),
                &Nonce::new(nonce.to_owned()),
            )
            .map_err(|e| OidcError::IdToken(error_chain(&e)))?;
        let identity = identity_of(claims);
        Ok((
            identity,
            Tokens {
                access_token: response.access_token().secret().clone(),
                refresh_token: response.refresh_token().map(|t| t.secret().clone()),
                id_token: id_token.to_string(),
                expires_in: response.expires_in(),
            },
        ))
    }
}

impl RelyingParty {
    /// Redeems `refresh_token` (RFC 6749 §6). The new tokens keep the old refresh token when
    /// the provider sends none (no rotation), and the old ID token when it sends none; a new
    /// ID token is verified (without a nonce, OpenID Connect Core §12.2) and must name
    /// `sub`.
    ///
    /// # Errors
    /// [`RefreshError::Refused`] for `invalid_grant` or an ID token for someone else;
    /// [`RefreshError::Failed`] otherwise.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        sub: &str,
        id_token: &str,
    ) -> Result<Tokens, RefreshError> {
        let token = RefreshToken::new(refresh_token.to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| RefreshError::Failed(e.to_string()))?
            .request_async(&http)
            .await
            .map_err(|e| match &e {
                openidconnect::RequestTokenError::ServerResponse(r)
                    if *r.error() == openidconnect::core::CoreErrorResponseType::InvalidGrant =>
                {
                    RefreshError::Refused(error_chain(&e))
                }
                _ => RefreshError::Failed(error_chain(&e)),
            })?;
        let new_id_token = match response.id_token() {
            Some(t) => {
                let verifier = self
                    .client
                    .id_token_verifier()
                    .set_allowed_algs(self.algs.clone());
                let claims = t
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| RefreshError::Failed(error_chain(&e)))?;
                if claims.subject().as_str() != sub {
                    return Err(RefreshError::Refused(
                        "the refreshed ID token names another subject".into(),
                    ));
                }
                t.to_string()
            }
            None => id_token.to_owned(),
        };
        Ok(Tokens {
            access_token: response.access_token().secret().clone(),
            refresh_token: Some(
                response
                    .refresh_token()
                    .map_or_else(|| refresh_token.to_owned(), |t| t.secret().clone()),
            ),
            id_token: new_id_token,
            expires_in: response.expires_in(),
        })
    }
}

fn identity_of(
    c: &openidconnect::IdTokenClaims<openidconnect::EmptyAdditionalClaims, CoreGenderClaim>,
) -> Identity {
    Identity {
        iss: c.issuer().as_str().to_owned(),
        sub: c.subject().as_str().to_owned(),
        email: c.email().map(|e| e.as_str().to_owned()),
        email_verified: c.email_verified(),
        name: c
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
        preferred_username: c.preferred_username().map(|u| u.as_str().to_owned()),
        exp: c.expiration().timestamp(),
        auth_time: c.auth_time().map(|t| t.timestamp()),
    }
}

/// One string field of the discovery document (the core metadata type does not keep
/// extensions), or `None` when it cannot be had.
async fn discovery_field(issuer: &str, field: &str) -> Option<String> {
    let url: http::Uri = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
    .parse()
    .ok()?;
    let doc = crate::fetch::get_json(&url).await.ok()?;
    doc.get(field)?.as_str().map(str::to_owned)
}

/// An error and its sources, `: `-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use fluxlit_testkit::idp::{Agent, Provider};

    use super::*;

    const REDIRECT: &str = "http://127.0.0.1:9/api/auth/callback";

    async fn provider() -> Provider {
        Provider::start(
            serde_json::json!([{
                "client_id": "fluxlit",
                "client_secret": "test-secret",
                "redirect_uris": [REDIRECT],
                "post_logout_redirect_uris": ["http://127.0.0.1:9/"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }]),
            serde_json::Value::Null,
        )
        .await
    }

    fn config(issuer: &str) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_owned(),
            client_id: "fluxlit".into(),
            client_secret: Some("test-secret".into()),
            redirect_uri: REDIRECT.into(),
            scopes: vec!["email".into(), "profile".into()],
        }
    }

    fn param(url: &str, name: &str) -> Option<String> {
        url.split_once('?')?.1.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }

    /// Against the real provider (npm oidc-provider, PKCE required): a login through its forms
    /// gives the user's identity; the authorization request carries S256, state and nonce; the
    /// logout endpoint is discovered.
    #[tokio::test]
    async fn logs_a_user_in_with_pkce_and_nonce() {
        let p = provider().await;
        let rp = RelyingParty::discover(config(&p.issuer)).await.unwrap();
        assert_eq!(
            rp.end_session_endpoint(),
            Some(format!("{}/session/end", p.issuer).as_str())
        );
        let start = rp.start_login();
        assert_eq!(
            param(&start.url, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert_eq!(
            param(&start.url, "state").as_deref(),
            Some(start.state.as_str())
        );
        assert_eq!(
            param(&start.url, "nonce").as_deref(),
            Some(start.nonce.as_str())
        );
        assert!(
            !start.url.contains(&start.verifier),
            "the verifier stays secret"
        );
        let back = Agent::new()
            .login_at_provider(&p.issuer, &start.url, "ada")
            .await;
        assert_eq!(param(&back, "state").as_deref(), Some(start.state.as_str()));
        let code = param(&back, "code").unwrap();
        let (who, tokens) = rp
            .finish_login(&code, &start.nonce, &start.verifier)
            .await
            .unwrap();
        assert_eq!(who.sub, "ada");
        assert_eq!(who.iss, p.issuer);
        assert_eq!(who.email.as_deref(), Some("ada@example.test"));
        assert_eq!(who.email_verified, Some(true));
        assert_eq!(who.preferred_username.as_deref(), Some("ada"));
        assert!(tokens.refresh_token.is_some());
        assert!(!format!("{tokens:?}").contains(&tokens.access_token));
        // The code is one-shot.
        let again = rp.finish_login(&code, &start.nonce, &start.verifier).await;
        assert!(matches!(again, Err(OidcError::Exchange(_))), "{again:?}");
    }

    /// A wrong nonce (a replayed or swapped callback) and a wrong PKCE verifier are refused.
    #[tokio::test]
    async fn refuses_a_wrong_nonce_and_a_wrong_verifier() {
        let p = provider().await;
        let rp = RelyingParty::discover(config(&p.issuer)).await.unwrap();
        let mut agent = Agent::new();

        let start = rp.start_login();
        let back = agent.login_at_provider(&p.issuer, &start.url, "ada").await;
        let code = param(&back, "code").unwrap();
        let e = rp
            .finish_login(&code, "another-nonce", &start.verifier)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OidcError::IdToken(m) if m.contains("nonce")),
            "{e}"
        );

        let start = rp.start_login();
        let back = agent.login_at_provider(&p.issuer, &start.url, "ada").await;
        let code = param(&back, "code").unwrap();
        let other = rp.start_login().verifier;
        let e = rp
            .finish_login(&code, &start.nonce, &other)
            .await
            .unwrap_err();
        assert!(matches!(e, OidcError::Exchange(_)), "{e}");
    }

    /// Discovery must name the configured issuer exactly (a trailing slash is another issuer).
    #[tokio::test]
    async fn discovery_checks_the_issuer() {
        let p = provider().await;
        let e = RelyingParty::discover(config(&format!("{}/", p.issuer)))
            .await
            .unwrap_err();
        assert!(matches!(e, OidcError::Discovery { .. }), "{e}");
        let e = RelyingParty::discover(config("not a url"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                OidcError::Url {
                    what: "oidc_issuer",
                    ..
                }
            ),
            "{e}"
        );
    }
}
