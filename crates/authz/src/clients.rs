//! Finding the client a request names: registered clients (operator-created or dynamically
//! registered) from the store, and clients identified by a Client ID Metadata Document URL.

use mandate_core::{Client, OAuthError};

use crate::{Authz, cimd, store_failure};

/// The client with this `client_id`, if any. An `https://` id is resolved as a metadata document
/// (`crate::cimd`); a document that cannot be fetched or is invalid is an `invalid_client` error
/// rather than `None`, so its description can say why.
pub async fn find_client(authz: &Authz, client_id: &str) -> Result<Option<Client>, OAuthError> {
    if cimd::is_document_url(client_id) {
        return cimd::resolve(authz, client_id).await.map(Some);
    }
    authz.store.client(client_id).await.map_err(store_failure)
}
