//! Assembles the HTTP application: API routes (documented with utoipa), Swagger UI, the dashboard,
//! and the layers every response goes through.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::state::AppState;
use crate::store::Store;
use crate::{audit, auth, http, system, web};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fast VM",
        description = "Run QEMU/KVM virtual machines from a browser or an API. Every endpoint but \
            `POST /api/auth/login` and `GET /api/health` needs `Authorization: Bearer <token>`; \
            errors are `{\"detail\": \"...\"}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign in, sign out, your own account"),
        (name = "users", description = "User management (admin only)"),
        (name = "audit", description = "Audit log (admin only)"),
        (name = "system", description = "Health and host information"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn api() -> (Router<AppState>, OpenApiDoc) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes())
        .merge(audit::routes())
        .merge(system::routes())
        .split_for_parts()
}

/// The OpenAPI document the code describes (what `fastvm openapi` prints).
pub fn openapi_json() -> anyhow::Result<String> {
    Ok(api().1.to_pretty_json()?)
}

/// Prepares the data directory and everything the handlers share.
pub async fn prepare(settings: Settings) -> anyhow::Result<AppState> {
    for dir in settings.layout_dirs() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = Store::open(&settings.db_path())?;
    let tokens = TokenKeys::load(settings.jwt_secret.as_deref(), &settings.data_dir)?;
    auth::ensure_default_admin(&store, settings.bcrypt_cost).await?;
    Ok(AppState {
        login_limiter: Arc::new(LoginLimiter::new(settings.login_rate_limit)),
        settings: Arc::new(settings),
        store,
        tokens: Arc::new(tokens),
    })
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = api();
    let production = state.settings.production;
    let cors = http::cors(&state.settings.cors_origins);
    Router::new()
        .merge(api.layer(from_fn_with_state(state.clone(), audit::middleware)))
        .merge(SwaggerUi::new("/docs").url("/api/openapi.json", doc))
        .fallback(web::serve)
        .layer(from_fn(http::json_errors))
        .layer(CatchPanicLayer::custom(http::panic_response))
        .layer(cors)
        .layer(from_fn(move |req, next| http::security_headers(production, req, next)))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
