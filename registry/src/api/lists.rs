//! Listings: `GET /v2/<name>/tags/list`, `GET /v2/_catalog` (both with `n`/`last` and a `Link`
//! header to the next page), `GET /v2/<name>/referrers/<digest>` (with `artifactType`) and
//! docker's `GET /v1/search` (what `docker search` asks a registry).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use wharf_common::media_type;

use super::{ApiError, Req, RequestError, header_value, parse_digest};
use crate::metadata::Page;
use crate::service::{Registry, Repository};

/// `n` and `last` from the query.
fn paging(req: &Req) -> Result<(Option<u32>, Option<&str>), ApiError> {
    let n = req
        .query
        .get("n")
        .map(|n| {
            n.parse::<u64>()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .map_err(|_| RequestError::PageSize(n.clone()))
        })
        .transpose()?;
    let last = req
        .query
        .get("last")
        .map(String::as_str)
        .filter(|l| !l.is_empty());
    Ok((n, last))
}

/// The page as JSON, with a `Link` to the next one whenever there is more, whether the client
/// asked for pages or not (the page size is then the server's).
fn with_link(body: Value, page: &Page, path: &str) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if page.more
        && let Some(last) = page.names.last()
    {
        let n = page.names.len();
        let link = format!("<{path}?n={n}&last={}>; rel=\"next\"", encode(last));
        resp.headers_mut().insert(header::LINK, header_value(&link));
    }
    resp
}

/// Percent-encodes what a tag or repository name may hold that a query may not.
fn encode(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace('+', "%2B")
}

pub async fn tags(reg: &Registry, repo: &Repository, req: &Req) -> Result<Response, ApiError> {
    let (n, last) = paging(req)?;
    let page = reg.tags(repo, n, last).await?;
    let body = json!({"name": repo.as_str(), "tags": page.names});
    Ok(with_link(body, &page, &format!("/v2/{repo}/tags/list")))
}

/// The tags of a mirrored repository, named as the client named it.
pub async fn mirrored_tags(
    reg: &Registry,
    repo: &Repository,
    t: &crate::service::mirror::Target,
    req: &Req,
) -> Result<Response, ApiError> {
    let (n, last) = paging(req)?;
    let page = reg.mirrored_tags(t, n, last).await?;
    let body = json!({"name": repo.as_str(), "tags": page.names});
    Ok(with_link(body, &page, &format!("/v2/{repo}/tags/list")))
}

pub async fn catalog(reg: &Registry, req: &Req) -> Result<Response, ApiError> {
    let (n, last) = paging(req)?;
    let page = reg.catalog(n, last, &|r| req.may_list(r)).await?;
    let body = json!({"repositories": page.names});
    Ok(with_link(body, &page, "/v2/_catalog"))
}

pub async fn referrers(
    reg: &Registry,
    repo: &Repository,
    digest: &str,
    req: &Req,
) -> Result<Response, ApiError> {
    let subject = parse_digest(digest)?;
    // Media types hold no spaces: a `+` sent unencoded (and so decoded as a space) is a `+`.
    let filter = req
        .query
        .get("artifactType")
        .filter(|t| !t.is_empty())
        .map(|t| t.replace(' ', "+"));
    let filter = filter.as_deref();
    let list = reg.referrers(repo, &subject, filter).await?;
    let manifests: Vec<Value> = list
        .into_iter()
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest.as_str(),
                "size": r.size,
            });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = (
        [(header::CONTENT_TYPE, media_type::OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if filter.is_some() {
        resp.headers_mut()
            .insert("OCI-Filters-Applied", header_value("artifactType"));
    }
    Ok(resp)
}

/// docker's search API, `GET /v1/search?q=TERM&n=PAGE_SIZE&page=N` (page size 25 by default,
/// at most 100, as Docker Hub's): repositories whose name contains the term, with their
/// descriptions; stars, official and automated are always 0 and false here.
pub async fn search(reg: &Registry, req: &Req) -> Result<Response, ApiError> {
    let number = |key: &str, default: u32| -> Result<u32, ApiError> {
        match req.query.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| RequestError::PageSize(v.clone()).into()),
        }
    };
    let query = req.query.get("q").map(String::as_str).unwrap_or_default();
    let page_size = number("n", 25)?.clamp(1, 100);
    let page = number("page", 1)?.max(1);
    let visible = |r: &str| req.may_list(r);
    let filter: Option<&(dyn Fn(&str) -> bool + Sync)> = match req.auth {
        Some(_) => Some(&visible),
        None => None,
    };
    let (total, hits) = reg.search(query, page, page_size, filter).await?;
    let results: Vec<Value> = hits
        .into_iter()
        .map(|(name, description)| {
            json!({
                "name": name,
                "description": description,
                "star_count": 0,
                "is_official": false,
                "is_automated": false,
            })
        })
        .collect();
    let body = json!({
        "num_results": total,
        "query": query,
        "page": page,
        "page_size": page_size,
        "num_pages": total.div_ceil(u64::from(page_size)),
        "results": results,
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}
