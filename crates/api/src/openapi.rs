//! What the OpenAPI document says beside the handlers' own annotations:
//! the bearer token, and the answers of the layers around every handler.

/// Declares the bearer token in the OpenAPI document.
pub(crate) struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Documents, on every operation, the answers that come from the layers
/// around its handler rather than from the handler itself: 401 from the
/// token check, 400/413/415 from the extractors, 500/503 from the engine's
/// own trouble. Without them the document lists statuses a client sees
/// only in part, which a schema-driven client (or fuzzer) reports as
/// undocumented (scripts/fuzz-api.sh checks status codes against it).
pub(crate) struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let uses_engine = op.operation_id.as_deref() != Some("openapi");
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                };
                add("401", "No `Authorization: Bearer TOKEN`, or a wrong token");
                if has_body || has_params {
                    add("400", "Malformed request: its body, query string or path");
                }
                if has_body {
                    add("413", "The request body exceeds 1 MiB");
                    add("415", "The request body is not sent as `application/json`");
                }
                if uses_engine {
                    add("500", "The server's own I/O or metadata store failed");
                    add(
                        "503",
                        "The pool stopped after a failed commit, or is shutting down",
                    );
                }
            }
        }
    }
}
