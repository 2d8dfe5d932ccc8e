//! The OpenAPI 3 document served at `/openapi.json`. Schemas come from the
//! model types themselves (utoipa derives); the paths are generated from the
//! same resource table the router uses, so the two cannot drift apart.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, PathsBuilder, Ref, Required, ResponseBuilder};
use utoipa::OpenApi as _;

use tollgate_proto::model::*;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tollgate admin API",
        description = "Manage APIs, usage plans, keys, policies, authorizers, admin tokens and the cluster."
    ),
    components(schemas(
        Api,
        KeySource,
        KeyFrom,
        Stage,
        Route,
        Throttle,
        UsagePlan,
        PlanStage,
        MethodThrottle,
        Quota,
        Period,
        ApiKeySpec,
        ApiKeyView,
        Policy,
        Statement,
        Effect,
        Condition,
        ConditionOperator,
        Authorizer,
        AuthorizerKind,
        JwtAuthorizer,
        Jwk,
        HttpAuthorizer,
        HttpAuthorizerMode,
        AdminTokenSpec,
        AdminTokenView,
        Scope
    ))
)]
struct Base;

fn json_ref(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build()
}

fn response(description: &str, schema: Option<&str>) -> utoipa::openapi::Response {
    let mut b = ResponseBuilder::new().description(description);
    if let Some(s) = schema {
        b = b.content("application/json", json_ref(s));
    }
    b.build()
}

fn param(name: &str, place: ParameterIn, required: bool, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(place)
        .required(if required { Required::True } else { Required::False })
        .description(Some(description))
        .build()
}

fn errors(op: OperationBuilder) -> OperationBuilder {
    op.response("400", response("Invalid input; the error names the field", None))
        .response("401", response("Missing or invalid admin token", None))
        .response("403", response("The admin token lacks the scope", None))
        .response("503", response("No leader known (retry)", None))
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut doc = Base::openapi();
    // (path segment, input schema, output schema, tag)
    let resources = [
        ("apis", "Api", "Api"),
        ("plans", "UsagePlan", "UsagePlan"),
        ("keys", "ApiKeySpec", "ApiKeyView"),
        ("policies", "Policy", "Policy"),
        ("authorizers", "Authorizer", "Authorizer"),
        ("tokens", "AdminTokenSpec", "AdminTokenView"),
    ];
    let mut paths = PathsBuilder::new();
    for (segment, input, output) in resources {
        let body = || {
            RequestBodyBuilder::new()
                .content("application/json", json_ref(input))
                .required(Some(Required::True))
                .build()
        };
        let stale =
            || param("stale", ParameterIn::Query, false, "true to read this node's copy without a read barrier");
        let id = || param("id", ParameterIn::Path, true, "object id");
        let collection = format!("/v1/admin/{segment}");
        let list = errors(OperationBuilder::new().tag(segment).summary(Some(format!("List {segment}"))))
            .parameter(param("limit", ParameterIn::Query, false, "page size, 1 to 1000 (default 100)"))
            .parameter(param("after", ParameterIn::Query, false, "return objects with ids after this one"))
            .parameter(stale())
            .response("200", response("A page: {items, next_after}", None));
        let create = errors(OperationBuilder::new().tag(segment).summary(Some(format!("Create one of {segment}"))))
            .request_body(Some(body()))
            .response("201", response("Created (keys and tokens include `secret`, shown only here)", Some(output)))
            .response("409", response("The id exists, or the change conflicts", None));
        paths = paths.path(collection.clone(), PathItem::new(HttpMethod::Get, list));
        paths = paths.path(collection.clone(), PathItem::new(HttpMethod::Post, create));
        let item = format!("{collection}/{{id}}");
        let get = errors(OperationBuilder::new().tag(segment).summary(Some("Read one")))
            .parameter(id())
            .parameter(stale())
            .response("200", response("The object", Some(output)))
            .response("404", response("No such id", None));
        let put = errors(OperationBuilder::new().tag(segment).summary(Some("Replace one")))
            .parameter(id())
            .request_body(Some(body()))
            .response("200", response("The stored object", Some(output)))
            .response("404", response("No such id", None))
            .response("409", response("The change conflicts", None));
        let delete = errors(OperationBuilder::new().tag(segment).summary(Some("Delete one")))
            .parameter(id())
            .response("204", response("Deleted", None))
            .response("404", response("No such id", None))
            .response("409", response("Still used by another object", None));
        paths = paths.path(item.clone(), PathItem::new(HttpMethod::Get, get));
        paths = paths.path(item.clone(), PathItem::new(HttpMethod::Put, put));
        paths = paths.path(item, PathItem::new(HttpMethod::Delete, delete));
    }
    let cluster = [
        ("/v1/admin/cluster", HttpMethod::Get, "Cluster status: leader, term, indexes, members"),
        ("/v1/admin/cluster/nodes", HttpMethod::Post, "Add a node: {id, http_addr, peer_addr, voter}"),
        ("/v1/admin/cluster/nodes/{id}/promote", HttpMethod::Post, "Promote a learner to voter"),
        ("/v1/admin/cluster/nodes/{id}", HttpMethod::Delete, "Remove a node"),
        (
            "/v1/admin/keys/{id}/reroll",
            HttpMethod::Post,
            "New key secret (shown once); {overlap_secs} keeps the old one working",
        ),
    ];
    let usage = errors(OperationBuilder::new().tag("usage").summary(Some("Quota usage per key and day (GetUsage)")))
        .parameter(param("id", ParameterIn::Path, true, "plan id"))
        .parameter(param("start_date", ParameterIn::Query, false, "first day, YYYY-MM-DD (default today, UTC)"))
        .parameter(param(
            "end_date",
            ParameterIn::Query,
            false,
            "last day, YYYY-MM-DD (default today); at most 366 days",
        ))
        .parameter(param("key_id", ParameterIn::Query, false, "only this key"))
        .parameter(param("limit", ParameterIn::Query, false, "keys per page, 1 to 1000 (default 100)"))
        .parameter(param("after", ParameterIn::Query, false, "keys with ids after this one"))
        .parameter(param("stale", ParameterIn::Query, false, "true to read this node's copy without a read barrier"))
        .response("200", response("Usage per key", Some("UsageReport")))
        .response("404", response("No such plan or key", None));
    paths = paths.path("/v1/admin/plans/{id}/usage", PathItem::new(HttpMethod::Get, usage));
    let update = errors(
        OperationBuilder::new()
            .tag("usage")
            .summary(Some("Add to or take from a key's remaining quota this period (UpdateUsage)")),
    )
    .parameter(param("id", ParameterIn::Path, true, "plan id"))
    .parameter(param("key_id", ParameterIn::Path, true, "key id"))
    .request_body(Some(
        RequestBodyBuilder::new()
            .content("application/json", json_ref("UsageUpdate"))
            .required(Some(Required::True))
            .build(),
    ))
    .response("200", response("The current period after the change", Some("PeriodUsage")))
    .response("404", response("No such plan or key", None));
    paths = paths.path("/v1/admin/plans/{id}/usage/{key_id}", PathItem::new(HttpMethod::Post, update));
    for (path, method, summary) in cluster {
        let op = errors(OperationBuilder::new().tag("cluster").summary(Some(summary)))
            .response("200", response("Done", None));
        paths = paths.path(path, PathItem::new(method, op));
    }
    let check = OperationBuilder::new()
        .tag("check")
        .summary(Some("Decide one request: may it pass, and with which headers?"))
        .request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json_ref("CheckRequest"))
                .required(Some(Required::True))
                .build(),
        ))
        .response("200", response("The decision", Some("Decision")))
        .response("400", response("Malformed check request; the error names the field", None));
    paths = paths.path("/v1/check", PathItem::new(HttpMethod::Post, check));
    for (path, summary) in [
        ("/healthz", "Liveness"),
        ("/readyz", "Ready: member of a cluster with a known leader"),
        ("/metrics", "Prometheus metrics"),
        ("/.well-known/jwks.json", "Public keys that verify X-Tollgate-Identity"),
    ] {
        let op = OperationBuilder::new().tag("operations").summary(Some(summary)).response("200", response("OK", None));
        paths = paths.path(path, PathItem::new(HttpMethod::Get, op));
    }
    doc.paths = paths.build();
    let components = doc.components.get_or_insert_with(Default::default);
    use tollgate_proto::usage::{DayUsage, KeyUsage, PeriodUsage, UsageReport, UsageUpdate};
    use utoipa::PartialSchema;
    for (name, schema) in [
        ("UsageReport", UsageReport::schema()),
        ("KeyUsage", KeyUsage::schema()),
        ("DayUsage", DayUsage::schema()),
        ("PeriodUsage", PeriodUsage::schema()),
        ("UsageUpdate", UsageUpdate::schema()),
    ] {
        components.schemas.insert(name.to_string(), schema);
    }
    components.add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    doc.security = Some(vec![SecurityRequirement::new("admin_token", Vec::<String>::new())]);
    doc
}

#[cfg(test)]
mod tests {
    use super::document;
    use crate::http::admin::{Apis, Authorizers, Keys, Plans, Policies, Resource, Tokens};

    #[test]
    fn every_admin_resource_is_documented_with_all_its_methods() {
        let doc = serde_json::to_value(document()).expect("document serialises");
        for path in [Apis::PATH, Plans::PATH, Keys::PATH, Policies::PATH, Authorizers::PATH, Tokens::PATH] {
            let collection = &doc["paths"][format!("/v1/admin/{path}")];
            let item = &doc["paths"][format!("/v1/admin/{path}/{{id}}")];
            for (node, methods) in [(collection, &["get", "post"][..]), (item, &["get", "put", "delete"][..])] {
                for m in methods {
                    assert!(node.get(m).is_some(), "{m} missing for {path}");
                }
            }
        }
        assert!(doc["components"]["schemas"]["ApiKeyView"].is_object());
        assert!(doc["paths"]["/v1/admin/plans/{id}/usage"]["get"].is_object());
        assert!(doc["paths"]["/v1/admin/plans/{id}/usage/{key_id}"]["post"].is_object());
        assert!(doc["components"]["schemas"]["UsageReport"].is_object());
    }
}
