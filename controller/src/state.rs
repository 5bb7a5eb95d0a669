//! What every handler can reach.

use std::sync::Arc;

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::consoles::Consoles;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::vms::manager::VmManager;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub tokens: Arc<TokenKeys>,
    pub login_limiter: Arc<LoginLimiter>,
    pub vms: Arc<VmManager>,
    pub jobs: Arc<Jobs>,
    pub consoles: Arc<Consoles>,
    pub metrics: Arc<Metrics>,
    pub default_password: Arc<crate::auth::DefaultPassword>,
    /// The backups' chunks (one store: what backups under way pin, garbage collection spares).
    pub chunks: Arc<crate::backups::chunks::ChunkStore>,
}

impl AppState {
    pub fn accounts(&self) -> crate::auth::accounts::Accounts<'_> {
        crate::auth::accounts::Accounts {
            store: &self.store,
            tokens: &self.tokens,
            limiter: &self.login_limiter,
            bcrypt_cost: self.settings.bcrypt_cost,
            production: self.settings.production,
        }
    }

    pub fn backups(&self) -> crate::backups::Ctx {
        crate::backups::Ctx {
            vms: self.vms.clone(),
            jobs: self.jobs.clone(),
            dir: self.settings.data_dir.join("backups"),
            chunks: self.chunks.clone(),
        }
    }
}
