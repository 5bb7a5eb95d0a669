//! The HTTP API, one module per domain: each handler parses the request, checks who asks, calls
//! the domain function and shapes the answer. Domain modules know nothing of HTTP.

pub mod audit;
pub mod auth;
pub mod backup_schedules;
pub mod backups;
pub mod cloudinit;
pub mod consoles;
pub mod guest;
pub mod isos;
pub mod jobs;
pub mod metrics;
pub mod metrics_push;
pub mod prometheus;
pub mod quotas;
pub mod session;
pub mod snapshots;
pub mod system;
pub mod upgrade;
pub mod vms;
pub mod volumes;

use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(quotas::routes())
        .merge(audit::routes())
        .merge(system::routes())
        .merge(vms::routes())
        .merge(guest::routes())
        .merge(volumes::routes())
        .merge(cloudinit::routes())
        .merge(isos::routes())
        .merge(snapshots::routes())
        .merge(backups::routes())
        .merge(jobs::routes())
        .merge(consoles::routes())
        .merge(metrics::routes())
}

/// OpenAPI requires a description on every response (generators refuse a document without):
/// where a route names none, the status's reason phrase.
pub fn describe_responses(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (code, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(r) = response {
                    if r.description.is_empty() {
                        let reason = code
                            .parse::<u16>()
                            .ok()
                            .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
                            .and_then(|c| c.canonical_reason());
                        r.description = reason.unwrap_or("Response").to_string();
                    }
                }
            }
        }
    }
}

/// A view that flattens a request type (`VmView` holds a `VmSpec`) is documented as `allOf` that
/// type and its own fields; but a request type refuses unknown fields, and under `allOf` that
/// refusal would forbid the view's own fields, so no answer would match its schema. In a view, the
/// request type's schema goes inline without the refusal; requests still name the closed one.
pub fn open_flattened_requests(doc: &mut OpenApi) {
    let Some(components) = doc.components.as_mut() else { return };
    let closed: std::collections::BTreeMap<String, Schema> = components
        .schemas
        .iter()
        .filter_map(|(name, schema)| match schema {
            RefOr::T(Schema::Object(o))
                if matches!(
                    o.additional_properties.as_deref(),
                    Some(AdditionalProperties::FreeForm(false))
                ) =>
            {
                let mut open = o.clone();
                open.additional_properties = None;
                Some((format!("#/components/schemas/{name}"), Schema::Object(open)))
            }
            _ => None,
        })
        .collect();
    for schema in components.schemas.values_mut() {
        if let RefOr::T(Schema::AllOf(all)) = schema {
            for item in all.items.iter_mut() {
                if let RefOr::Ref(r) = item {
                    if let Some(open) = closed.get(&r.ref_location) {
                        *item = RefOr::T(open.clone());
                    }
                }
            }
        }
    }
}
