//! The admin API's object routes: create, read, replace, delete and list for
//! every kind of object, under
//! `/v1/admin/{apis,plans,keys,policies,authorizers,tokens,ratelimits}`.
//! Rate limit domains are also found by their domain name
//! (`GET /v1/admin/ratelimits?domain=NAME`), which is how `tollgate limits`
//! turns a domain into an id.
//!
//! Writes go through Raft (forwarded to the leader when this node is not it).
//! Reads are linearizable unless `?stale=true`. Input is validated here
//! (field-level rules) and again by the state machine (rules that need the rest
//! of the model); either way a failure names the field and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tollgate_proto::command::{Applied, PutMode, MAX_CREATE_MANY};
use tollgate_proto::model::*;
use tollgate_proto::{validate, Command, FieldError, Rejection};

use super::auth::{AdminCaller, Audit};
use super::error::ApiError;
use super::extract::{JsonBody, QueryMap, ReadOptions, RequestId};
use super::HttpState;
use crate::app::App;
use crate::secret;
use crate::state::Model;

/// One kind of object as the admin API serves it.
pub trait Resource: Send + Sync + 'static {
    const KIND: EntityKind;
    /// The collection's path segment, e.g. `plans`.
    const PATH: &'static str;
    type Input: DeserializeOwned + Send;
    /// The object to create, and a secret to show once (keys and tokens).
    fn create(input: Self::Input) -> Result<(Entity, Option<String>), FieldError>;
    /// The object that replaces the stored one with this id.
    fn replace(id: &str, input: Self::Input) -> Result<Entity, FieldError>;
    /// Query parameters the list takes besides `stale`, `limit` and
    /// `after`, each selecting objects by a field (none for most kinds).
    const LIST_FILTERS: &'static [&'static str] = &[];
    /// The objects `query`'s [`Self::LIST_FILTERS`] select, in id order;
    /// `None` when it gives none of them (the list is then a page of all).
    fn select<'m>(_model: &'m Model, _query: &HashMap<String, String>) -> Option<Vec<&'m Entity>> {
        None
    }
}

fn path_id(body_id: &mut String, path_id: &str) -> Result<(), FieldError> {
    if !body_id.is_empty() && body_id != path_id {
        return Err(FieldError { field: "id".into(), message: "must be left out or match the id in the path".into() });
    }
    *body_id = path_id.to_string();
    Ok(())
}

macro_rules! plain_resource {
    ($marker:ident, $ty:ty, $kind:expr, $path:literal, $variant:ident, $check:path) => {
        pub struct $marker;
        impl Resource for $marker {
            const KIND: EntityKind = $kind;
            const PATH: &'static str = $path;
            type Input = $ty;
            fn create(mut input: $ty) -> Result<(Entity, Option<String>), FieldError> {
                if input.id.is_empty() {
                    input.id = secret::new_id(Self::KIND);
                }
                $check(&input)?;
                Ok((Entity::$variant(input), None))
            }
            fn replace(id: &str, mut input: $ty) -> Result<Entity, FieldError> {
                path_id(&mut input.id, id)?;
                $check(&input)?;
                Ok(Entity::$variant(input))
            }
        }
    };
}

plain_resource!(Apis, Api, EntityKind::Api, "apis", Api, validate::api);
plain_resource!(Plans, UsagePlan, EntityKind::Plan, "plans", Plan, validate::plan);
plain_resource!(Policies, Policy, EntityKind::Policy, "policies", Policy, validate::policy);
// Authorizers: the field rules, and key material checked as the verifier will use it.
plain_resource!(
    Authorizers,
    Authorizer,
    EntityKind::Authorizer,
    "authorizers",
    Authorizer,
    crate::gateway::jwt::validate_authorizer
);

/// Rate limit domains: the field rules (the state machine adds the one that
/// needs the rest of the model, a domain name unique in the cluster), and
/// `?domain=NAME` on the list, the lookup by the name Envoy sends.
pub struct RateLimits;
impl Resource for RateLimits {
    const KIND: EntityKind = EntityKind::RateLimit;
    const PATH: &'static str = "ratelimits";
    type Input = RateLimitDomain;
    fn create(mut input: RateLimitDomain) -> Result<(Entity, Option<String>), FieldError> {
        if input.id.is_empty() {
            input.id = secret::new_id(Self::KIND);
        }
        validate::rate_limit_domain(&input)?;
        Ok((Entity::RateLimit(input), None))
    }
    fn replace(id: &str, mut input: RateLimitDomain) -> Result<Entity, FieldError> {
        path_id(&mut input.id, id)?;
        validate::rate_limit_domain(&input)?;
        Ok(Entity::RateLimit(input))
    }
    const LIST_FILTERS: &'static [&'static str] = &["domain"];
    fn select<'m>(model: &'m Model, query: &HashMap<String, String>) -> Option<Vec<&'m Entity>> {
        let domain = query.get("domain")?;
        let found = model.rate_limit_domain(domain).and_then(|d| model.get(EntityKind::RateLimit, &d.id));
        Some(found.into_iter().collect())
    }
}

pub struct Keys;
impl Resource for Keys {
    const KIND: EntityKind = EntityKind::Key;
    const PATH: &'static str = "keys";
    type Input = ApiKeySpec;
    fn create(spec: ApiKeySpec) -> Result<(Entity, Option<String>), FieldError> {
        validate::key_spec(&spec)?;
        let (plain, digest) = secret::generate("tgk_");
        let key = ApiKey::from_spec(secret::new_id(Self::KIND), spec, digest, Timestamp::default());
        Ok((Entity::Key(key), Some(plain)))
    }
    fn replace(id: &str, spec: ApiKeySpec) -> Result<Entity, FieldError> {
        validate::key_spec(&spec)?;
        // The state machine keeps the stored secret digest.
        Ok(Entity::Key(ApiKey::from_spec(id.to_string(), spec, SecretDigest::default(), Timestamp::default())))
    }
    const LIST_FILTERS: &'static [&'static str] = &["search"];
    /// `?search=TEXT`: the keys whose id, name, customer id or visible
    /// secret prefix contains TEXT, ignoring case (how an operator finds a
    /// key from a support ticket or a log line). Empty: every key.
    fn select<'m>(model: &'m Model, query: &HashMap<String, String>) -> Option<Vec<&'m Entity>> {
        let needle = query.get("search").map(|s| s.to_lowercase()).filter(|s| !s.is_empty())?;
        let found = |text: &str| text.to_lowercase().contains(&needle);
        let matches = |e: &&Entity| match e {
            Entity::Key(k) => {
                found(&k.id) || found(&k.name) || k.customer_id.as_deref().is_some_and(found) || found(&k.secret.prefix)
            }
            _ => false,
        };
        Some(model.iter(EntityKind::Key).filter(matches).collect())
    }
}

pub struct Tokens;
impl Resource for Tokens {
    const KIND: EntityKind = EntityKind::Token;
    const PATH: &'static str = "tokens";
    type Input = AdminTokenSpec;
    fn create(spec: AdminTokenSpec) -> Result<(Entity, Option<String>), FieldError> {
        validate::token_spec(&spec)?;
        let (plain, digest) = secret::generate("tga_");
        let token = AdminToken {
            id: secret::new_id(Self::KIND),
            name: spec.name,
            scopes: spec.scopes,
            secret: digest,
            created_at: Timestamp::default(),
            updated_at: Timestamp::default(),
        };
        Ok((Entity::Token(token), Some(plain)))
    }
    fn replace(id: &str, spec: AdminTokenSpec) -> Result<Entity, FieldError> {
        validate::token_spec(&spec)?;
        Ok(Entity::Token(AdminToken {
            id: id.to_string(),
            name: spec.name,
            scopes: spec.scopes,
            secret: SecretDigest::default(),
            created_at: Timestamp::default(),
            updated_at: Timestamp::default(),
        }))
    }
}

/// Adds the five routes of one resource.
pub fn routes<R: Resource>(router: Router<HttpState>) -> Router<HttpState> {
    router
        .route(&format!("/v1/admin/{}", R::PATH), get(list::<R>).post(create::<R>))
        .route(&format!("/v1/admin/{}/{{id}}", R::PATH), get(read::<R>).put(replace::<R>).delete(delete::<R>))
}

async fn barrier(app: &App, options: &ReadOptions) -> Result<(), ApiError> {
    if !options.stale {
        app.leader.read_barrier().await?;
    }
    Ok(())
}

fn shown(entity: &Entity, secret: Option<String>) -> Value {
    let mut view = entity.to_view_json();
    if let (Some(secret), Value::Object(map)) = (secret, &mut view) {
        map.insert("secret".into(), Value::String(secret));
    }
    view
}

/// The one check of an admin write on objects: `action` on the
/// [`resources`] of each of `entities` (the stored object and what replaces
/// it, so a key cannot be moved out of what the token may manage). A token
/// that admin statements govern may not touch admin tokens or policies with
/// admin statements at all: it could give itself more, or free itself.
fn may_change(caller: &AdminCaller, model: &Model, action: &str, entities: &[&Entity]) -> Result<(), ApiError> {
    if entities.iter().any(|e| crate::state::audit::grants_admin(e)) && caller.governed(model) {
        return Err(ApiError::forbidden(
            "a token that policies govern may not change admin tokens or policies that name them; \
             use a token no policy names",
        ));
    }
    let all: Vec<String> = entities.iter().flat_map(|e| model.admin_resources(e)).collect();
    caller.may(model, action, &all)
}

async fn create<R: Resource>(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    RequestId(request): RequestId,
    Audit(audit): Audit,
    JsonBody(input): JsonBody<R::Input>,
) -> Result<Response, ApiError> {
    let (entity, secret) = R::create(input)?;
    may_change(&caller, &app.published().model, &format!("{}:create", R::PATH), &[&entity])?;
    let proposed_digest = secret_digest(&entity);
    let command = Command::Put { entity, mode: PutMode::Create, now: Timestamp::now() }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::Put(stored) if secret_digest(&stored) != proposed_digest => {
            // A client retry (same Idempotency-Key) of a create that already
            // happened: its secret was shown to the first request only.
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_created",
                format!(
                    "this Idempotency-Key already created {} {:?}; its secret was shown once and cannot be shown again",
                    stored.kind().noun(),
                    stored.id()
                ),
            ))
        }
        Applied::Put(stored) => Ok((StatusCode::CREATED, Json(shown(&stored, secret))).into_response()),
        other => Err(unexpected(other)),
    }
}

async fn replace<R: Resource>(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path(id): Path<String>,
    RequestId(request): RequestId,
    Audit(audit): Audit,
    JsonBody(input): JsonBody<R::Input>,
) -> Result<Response, ApiError> {
    let entity = R::replace(&id, input)?;
    let published = app.published();
    let stored = published.model.get(R::KIND, &id);
    let both: Vec<&Entity> = stored.into_iter().chain([&entity]).collect();
    may_change(&caller, &published.model, &format!("{}:update", R::PATH), &both)?;
    let command = Command::Put { entity, mode: PutMode::Replace, now: Timestamp::now() }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::Put(stored) => Ok(Json(shown(&stored, None)).into_response()),
        other => Err(unexpected(other)),
    }
}

async fn delete<R: Resource>(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path(id): Path<String>,
    RequestId(request): RequestId,
    Audit(audit): Audit,
) -> Result<Response, ApiError> {
    let published = app.published();
    if let Some(stored) = published.model.get(R::KIND, &id) {
        may_change(&caller, &published.model, &format!("{}:delete", R::PATH), &[stored])?;
    }
    app.leader.write(request, Command::Delete { kind: R::KIND, id }.audited(audit)).await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn read<R: Resource>(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path(id): Path<String>,
    options: ReadOptions,
) -> Result<Response, ApiError> {
    barrier(&app, &options).await?;
    let published = app.published();
    match published.model.get(R::KIND, &id) {
        Some(entity) => {
            caller.may(&published.model, &format!("{}:read", R::PATH), &published.model.admin_resources(entity))?;
            Ok(Json(entity.to_view_json()).into_response())
        }
        None => Err(Rejection::not_found(R::KIND, &id).into()),
    }
}

async fn list<R: Resource>(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    QueryMap(query): QueryMap,
) -> Result<Response, ApiError> {
    let options = ReadOptions::parse_with(&query, R::LIST_FILTERS)?;
    barrier(&app, &options).await?;
    let published = app.published();
    let model = &published.model;
    let action = format!("{}:read", R::PATH);
    // A token that policies govern sees what they let it read, and only that.
    let mut page = if caller.governed(model) {
        let selected = R::select(model, &query).unwrap_or_else(|| model.iter(R::KIND).collect());
        selected
            .into_iter()
            .filter(|e| options.after.as_deref().is_none_or(|after| e.id() > after))
            .filter(|e| caller.may(model, &action, &model.admin_resources(e)).is_ok())
            .take(options.limit + 1)
            .collect()
    } else {
        match R::select(model, &query) {
            // A selection is paged like the whole collection.
            Some(selected) => selected
                .into_iter()
                .filter(|e| options.after.as_deref().is_none_or(|after| e.id() > after))
                .take(options.limit + 1)
                .collect(),
            None => model.page(R::KIND, options.after.as_deref(), options.limit + 1),
        }
    };
    let next = if page.len() > options.limit {
        page.truncate(options.limit);
        page.last().map(|e| e.id().to_string())
    } else {
        None
    };
    let items: Vec<Value> = page.iter().map(|e| e.to_view_json()).collect();
    Ok(Json(json!({"items": items, "next_after": next})).into_response())
}

fn secret_digest(entity: &Entity) -> Option<[u8; 32]> {
    match entity {
        Entity::Key(k) => Some(k.secret.sha256),
        Entity::Token(t) => Some(t.secret.sha256),
        _ => None,
    }
}

fn unexpected(applied: Applied) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer {applied:?}"))
}

/// The body of a bulk key import: the keys to create, as for one create.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyImport {
    /// 1 to [`MAX_CREATE_MANY`] key specs.
    items: Vec<ApiKeySpec>,
}

/// `POST /v1/admin/keys/import`: creates up to [`MAX_CREATE_MANY`] keys in
/// one Raft entry, all or none (AWS API Gateway's `ImportApiKeys`, with
/// secrets made here). The answer lists each key with its secret, shown
/// only here, in the order given. A bad item is a 400 naming it
/// (`items[3].plan_ids`) and creates nothing.
pub async fn import_keys(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    RequestId(request): RequestId,
    Audit(audit): Audit,
    JsonBody(import): JsonBody<KeyImport>,
) -> Result<Response, ApiError> {
    let n = import.items.len();
    if n == 0 || n > MAX_CREATE_MANY {
        return Err(ApiError::field("items", format!("must hold 1 to {MAX_CREATE_MANY} keys; got {n}")));
    }
    let mut entities = Vec::with_capacity(n);
    let mut secrets = Vec::with_capacity(n);
    for (i, spec) in import.items.into_iter().enumerate() {
        let (entity, secret) = Keys::create(spec)
            .map_err(|e| FieldError { field: format!("items[{i}].{}", e.field), message: e.message })?;
        entities.push(entity);
        secrets.push(secret);
    }
    let all: Vec<&Entity> = entities.iter().collect();
    may_change(&caller, &app.published().model, "keys:create", &all)?;
    let now = Timestamp::now();
    let first_id = entities.first().map(|e| e.id().to_string());
    let command = Command::CreateMany { entities: entities.clone(), now }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::CreatedMany { first_id: created, .. } if created != first_id => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_created",
            "this Idempotency-Key already imported keys; their secrets were shown once and cannot be shown again",
        )),
        Applied::CreatedMany { .. } => {
            // Stored as proposed, stamped with the command's time.
            let items: Vec<Value> = entities
                .into_iter()
                .zip(secrets)
                .map(|(mut entity, secret)| {
                    entity.stamp(Some(now), now);
                    shown(&entity, secret)
                })
                .collect();
            Ok((StatusCode::CREATED, Json(json!({ "items": items }))).into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// The body of a reroll (optional).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerollRequest {
    /// How long the old secret keeps working: 0 (default) to
    /// [`MAX_OVERLAP_SECS`] seconds; more is a 400 naming `overlap_secs`.
    #[serde(default)]
    overlap_secs: u64,
}

/// The longest overlap window a reroll may give the old secret.
pub const MAX_OVERLAP_SECS: u64 = 30 * 86_400;

/// `POST /v1/admin/keys/{id}/reroll`: a new secret, shown once; the old one
/// keeps working for `overlap_secs`.
pub async fn reroll(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    Path(id): Path<String>,
    RequestId(request): RequestId,
    Audit(audit): Audit,
    body: Option<JsonBody<RerollRequest>>,
) -> Result<Response, ApiError> {
    // No body: no overlap.
    let input = body.map_or(RerollRequest { overlap_secs: 0 }, |JsonBody(input)| input);
    if input.overlap_secs > MAX_OVERLAP_SECS {
        return Err(ApiError::field("overlap_secs", format!("must be at most {MAX_OVERLAP_SECS} (30 days)")));
    }
    let published = app.published();
    if let Some(stored) = published.model.get(EntityKind::Key, &id) {
        may_change(&caller, &published.model, "keys:reroll", &[stored])?;
    }
    let (plain, digest) = secret::generate("tgk_");
    let ours = digest.sha256;
    let now = Timestamp::now();
    let overlap_until = Timestamp(now.0.saturating_add(i64::try_from(input.overlap_secs).unwrap_or(i64::MAX)));
    let command = Command::RerollKey { id, secret: digest, overlap_until, now }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::Put(stored) if secret_digest(&stored) == Some(ours) => {
            Ok(Json(shown(&stored, Some(plain))).into_response())
        }
        Applied::Put(stored) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_created",
            format!("this Idempotency-Key already rerolled key {:?}; its secret was shown once", stored.id()),
        )),
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/admin/identity-key`: the version that signs identity tokens.
pub async fn identity_key(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    options: ReadOptions,
) -> Result<Response, ApiError> {
    barrier(&app, &options).await?;
    caller.may(&app.published().model, "identity:read", &["identity".to_string()])?;
    let state = app.published().model.identity;
    Ok(Json(json!({"version": state.version, "kid": crate::gateway::identity::kid(state.version),
        "rotated_at": state.rotated_at, "signing": app.gateway.identity.enabled()}))
    .into_response())
}

/// `POST /v1/admin/identity-key/rotate`: sign with the next key version.
pub async fn rotate_identity_key(
    State(app): State<Arc<App>>,
    caller: AdminCaller,
    RequestId(request): RequestId,
    Audit(audit): Audit,
) -> Result<Response, ApiError> {
    caller.may(&app.published().model, "identity:rotate", &["identity".to_string()])?;
    let command = Command::RotateIdentityKey { now: Timestamp::now() }.audited(audit);
    match app.leader.write(request, command).await?? {
        Applied::IdentityKey(state) => Ok(Json(json!({"version": state.version,
            "kid": crate::gateway::identity::kid(state.version), "rotated_at": state.rotated_at}))
        .into_response()),
        other => Err(unexpected(other)),
    }
}
