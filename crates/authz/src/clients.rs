//! Finding the client a request names: registered clients from the store, and (once supported)
//! clients identified by a Client ID Metadata Document URL.

use mandate_core::{Client, OAuthError};

use crate::{Authz, store_failure};

/// The client with this `client_id`, if any.
pub async fn find_client(authz: &Authz, client_id: &str) -> Result<Option<Client>, OAuthError> {
    authz.store.client(client_id).await.map_err(store_failure)
}
