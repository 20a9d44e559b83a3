//! `/api/v1/igroups` and `/api/v1/lun-maps`: who may see which LUN over
//! NBD. Maps are a resource of their own (not `/luns/{name}/maps`) because
//! LUN names hold '/', which would make `DELETE /luns/a/maps/b` ambiguous.

use crate::error::ApiError;
use crate::extract::{JsonBody, PathName, QueryArgs};
use crate::wire::{CreateIgroup, ErrorBody, IgroupInfo, IgroupMember, LunMap};
use crate::{call, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use engine::Member;

fn members(addresses: &[String], cert_cns: &[String]) -> Result<Vec<Member>, ApiError> {
    let mut out = Vec::with_capacity(addresses.len() + cert_cns.len());
    for a in addresses {
        out.push(Member::address(a)?);
    }
    for c in cert_cns {
        out.push(Member::cert_cn(c)?);
    }
    Ok(out)
}

fn one_member(m: &IgroupMember) -> Result<Member, ApiError> {
    match (&m.address, &m.cert_cn) {
        (Some(a), None) => Ok(Member::address(a)?),
        (None, Some(c)) => Ok(Member::cert_cn(c)?),
        _ => Err(ApiError::invalid(
            "give exactly one of `address` and `cert_cn`",
        )),
    }
}

/// List igroups with their members and the LUNs mapped to them.
#[utoipa::path(
    get, path = "/api/v1/igroups", operation_id = "list_igroups", tag = "access",
    responses((status = 200, description = "Igroups by name", body = [IgroupInfo]))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<IgroupInfo>>, ApiError> {
    let groups = call(&state, |e| e.list_igroups()).await?;
    Ok(Json(groups.into_iter().map(IgroupInfo::from).collect()))
}

/// Create an igroup: hosts named by source address (CIDR) or TLS
/// client-certificate CN.
#[utoipa::path(
    post, path = "/api/v1/igroups", operation_id = "create_igroup", tag = "access",
    request_body = CreateIgroup,
    responses(
        (status = 201, description = "The new igroup", body = IgroupInfo),
        (status = 400, description = "Bad name, address or CN, or malformed body", body = ErrorBody),
        (status = 409, description = "An igroup of that name exists", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateIgroup>,
) -> Result<(StatusCode, Json<IgroupInfo>), ApiError> {
    engine::validate_igroup_name(&body.name)?;
    let members = members(&body.addresses, &body.cert_cns)?;
    let info = call(&state, move |e| e.create_igroup(&body.name, members)).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Show an igroup.
#[utoipa::path(
    get, path = "/api/v1/igroups/{name}", operation_id = "show_igroup", tag = "access",
    params(("name" = String, Path, description = "igroup name")),
    responses(
        (status = 200, description = "The igroup", body = IgroupInfo),
        (status = 404, description = "No such igroup", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<IgroupInfo>, ApiError> {
    let info = call(&state, move |e| e.igroup_info(&name)).await?;
    Ok(Json(info.into()))
}

/// Delete an igroup; refused while LUNs are mapped to it.
#[utoipa::path(
    delete, path = "/api/v1/igroups/{name}", operation_id = "delete_igroup", tag = "access",
    params(("name" = String, Path, description = "igroup name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such igroup", body = ErrorBody),
        (status = 409, description = "LUNs are mapped to it", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    call(&state, move |e| e.delete_igroup(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a member to an igroup.
#[utoipa::path(
    post, path = "/api/v1/igroups/{name}/members", operation_id = "add_igroup_member", tag = "access",
    params(("name" = String, Path, description = "igroup name")),
    request_body = IgroupMember,
    responses(
        (status = 200, description = "The igroup", body = IgroupInfo),
        (status = 400, description = "Not exactly one valid member", body = ErrorBody),
        (status = 404, description = "No such igroup", body = ErrorBody),
        (status = 409, description = "Already a member", body = ErrorBody),
    )
)]
pub async fn add_member(
    State(state): State<AppState>,
    PathName(name): PathName,
    JsonBody(body): JsonBody<IgroupMember>,
) -> Result<Json<IgroupInfo>, ApiError> {
    let member = one_member(&body)?;
    let info = call(&state, move |e| e.igroup_add(&name, member)).await?;
    Ok(Json(info.into()))
}

/// Remove a member from an igroup (`?address=` or `?cert_cn=`).
#[utoipa::path(
    delete, path = "/api/v1/igroups/{name}/members", operation_id = "remove_igroup_member", tag = "access",
    params(("name" = String, Path, description = "igroup name"), IgroupMember),
    responses(
        (status = 200, description = "The igroup", body = IgroupInfo),
        (status = 400, description = "Not exactly one valid member", body = ErrorBody),
        (status = 404, description = "No such igroup or member", body = ErrorBody),
    )
)]
pub async fn remove_member(
    State(state): State<AppState>,
    PathName(name): PathName,
    QueryArgs(query): QueryArgs<IgroupMember>,
) -> Result<Json<IgroupInfo>, ApiError> {
    let member = one_member(&query)?;
    let info = call(&state, move |e| e.igroup_remove(&name, member)).await?;
    Ok(Json(info.into()))
}

/// List LUN maps, by LUN.
#[utoipa::path(
    get, path = "/api/v1/lun-maps", operation_id = "list_lun_maps", tag = "access",
    responses((status = 200, description = "Every map", body = [LunMap]))
)]
pub async fn list_maps(State(state): State<AppState>) -> Result<Json<Vec<LunMap>>, ApiError> {
    let luns = call(&state, |e| e.list_luns("")).await?;
    Ok(Json(
        luns.into_iter()
            .flat_map(|l| {
                let lun = l.name;
                l.maps.into_iter().map(move |igroup| LunMap {
                    lun: lun.clone(),
                    igroup,
                })
            })
            .collect(),
    ))
}

/// Map a LUN to an igroup: its members see the LUN and its snapshots.
#[utoipa::path(
    post, path = "/api/v1/lun-maps", operation_id = "map_lun", tag = "access",
    request_body = LunMap,
    responses(
        (status = 201, description = "Mapped", body = LunMap),
        (status = 404, description = "No such LUN or igroup", body = ErrorBody),
        (status = 409, description = "Already mapped", body = ErrorBody),
    )
)]
pub async fn map(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<LunMap>,
) -> Result<(StatusCode, Json<LunMap>), ApiError> {
    let m = body.clone();
    call(&state, move |e| e.map_lun(&m.lun, &m.igroup)).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

/// Unmap a LUN from an igroup (`?lun=&igroup=`).
#[utoipa::path(
    delete, path = "/api/v1/lun-maps", operation_id = "unmap_lun", tag = "access",
    params(LunMap),
    responses(
        (status = 204, description = "Unmapped"),
        (status = 404, description = "No such LUN or map", body = ErrorBody),
    )
)]
pub async fn unmap(
    State(state): State<AppState>,
    QueryArgs(query): QueryArgs<LunMap>,
) -> Result<StatusCode, ApiError> {
    call(&state, move |e| e.unmap_lun(&query.lun, &query.igroup)).await?;
    Ok(StatusCode::NO_CONTENT)
}
