//! `connect_url`: a signed connect URL for a browser, with its node and expiry.

use imclient::ImClient;
use imclient::token::ConnectClaims;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::params::Params;

/// `{client, meta?}` → `{url, node, expires_at}`.
pub fn connect_url(im: &ImClient, can_sign: bool, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["client", "meta"])?;
    let client = p.client("client")?;
    let meta = p.value_or_null("meta");
    if !can_sign {
        return Err(ApiError::new(
            501,
            "cannot_sign",
            "this node checks tokens with public keys only and holds no signing key; issue \
             connect URLs from a backend with the private key (imclient's \
             --token-private-key), or give this node a --token-secret",
        ));
    }
    let url = im.prev_connect_server(&client, meta)?;
    // The node and expiry come from the token just signed, so they are exactly what the node
    // will check; it was signed here, so it needs no verifying.
    let token = url.rsplit_once("token=").map_or("", |(_, t)| t);
    let claims: ConnectClaims =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|e| {
            ApiError::new(
                500,
                "internal",
                format!("cannot read the token just signed: {e}"),
            )
        })?;
    Ok(json!({ "url": url, "node": claims.node, "expires_at": claims.exp }))
}
