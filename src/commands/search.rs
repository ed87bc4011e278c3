//! `wharf search [REGISTRY/]TERM`: repositories whose name holds the term, as `docker search`
//! lists them. The registry's search API (`GET /v1/search`, what Docker Hub's index and
//! `wharf serve` answer) when it has one; else its `_catalog`, filtered here (distribution has
//! no search). Without a registry, Docker Hub's index (asked without credentials). A registry
//! the user logged in to is asked as that user (the `/v2/` challenge answered for
//! `registry:catalog:*`, as docker does with a login), so it shows what the user may see.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::{OutputFormat, SearchArgs};
use crate::commands::images::print_table;
use crate::context::Ctx;
use crate::printer::out;

/// One repository found.
struct Found {
    name: String,
    description: String,
    stars: u64,
    official: bool,
}

/// `REGISTRY/TERM` split as docker splits a name: the first part is a registry when it has a
/// `.` or a `:` or is `localhost`; else the whole is a term for Docker Hub.
fn split(term: &str) -> (&str, &str) {
    match term.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("docker.io", term),
    }
}

/// Escapes a query value.
fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn run(ctx: &Ctx, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let (registry, term) = split(&args.term);
    anyhow::ensure!(
        !term.is_empty(),
        "search {:?}: no term to look for",
        args.term
    );
    let limit = args.limit.clamp(1, 100);
    let client = ctx.client(None)?;
    // Docker Hub answers search on its index host, not its registry's.
    let index = (registry == "docker.io").then_some("index.docker.io");
    let path = format!("/v1/search?q={}&n={limit}", query_value(term));
    let answer = match index {
        Some(index) => client.get_anonymous(registry, Some(index), &path).await,
        None => client.get_listing(registry, &path).await,
    };
    let (status, _, body) = answer.with_context(|| format!("searching {registry}"))?;
    // A registry (not Docker Hub) whose answer is not a search result has no search API: its
    // catalog is read instead.
    let found = match (status, from_search(&body)) {
        (401 | 403, _) => anyhow::bail!(
            "{registry} answered {status} to the search: it shows its repositories only to users it knows (`wharf login {registry}`)"
        ),
        (200, Ok(found)) => found,
        _ if index.is_none() => from_catalog(&client, registry, term, limit).await?,
        (200, Err(e)) => return Err(e.context(format!("{registry}'s search answer"))),
        (other, _) => anyhow::bail!("{registry} answered {other} to {path}"),
    };
    let found: Vec<Found> = found.into_iter().take(limit as usize).collect();
    match args.format {
        OutputFormat::Json => {
            for f in &found {
                out(json!({
                    "Name": f.name,
                    "Description": f.description,
                    "StarCount": f.stars,
                    "IsOfficial": f.official,
                }))?;
            }
        }
        OutputFormat::Table => {
            let mut rows = vec![
                ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            for f in &found {
                // docker cuts descriptions at 45 characters.
                let description = if args.no_trunc || f.description.chars().count() <= 45 {
                    f.description.clone()
                } else {
                    let cut: String = f.description.chars().take(44).collect();
                    format!("{cut}…")
                };
                rows.push(vec![
                    f.name.clone(),
                    description.replace('\n', " "),
                    f.stars.to_string(),
                    if f.official {
                        "[OK]".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            print_table(&rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The results of a `/v1/search` answer.
fn from_search(body: &[u8]) -> anyhow::Result<Vec<Found>> {
    let v: Value = serde_json::from_slice(body)?;
    let results = v["results"]
        .as_array()
        .context("no \"results\" list in it")?;
    Ok(results
        .iter()
        .map(|r| Found {
            name: r["name"].as_str().unwrap_or_default().to_owned(),
            description: r["description"].as_str().unwrap_or_default().to_owned(),
            stars: r["star_count"].as_u64().unwrap_or(0),
            official: r["is_official"].as_bool().unwrap_or(false),
        })
        .collect())
}

/// A registry without a search API: its catalog, page by page (following `Link`), the names
/// holding the term (any case) kept, up to `limit`.
async fn from_catalog(
    client: &wharf_common::client::Client,
    registry: &str,
    term: &str,
    limit: u32,
) -> anyhow::Result<Vec<Found>> {
    let wanted = term.to_lowercase();
    let mut found = Vec::new();
    let mut next = Some("/v2/_catalog?n=1000".to_owned());
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        anyhow::ensure!(pages <= 10_000, "{registry}'s catalog does not end");
        let (status, link, body) = client
            .get_listing(registry, &url)
            .await
            .with_context(|| format!("reading {registry}'s catalog"))?;
        match status {
            200 => {}
            401 | 403 => anyhow::bail!(
                "{registry} has no search API and answered {status} to a catalog read (`wharf login {registry}`?)"
            ),
            other => {
                anyhow::bail!("{registry} has no search API, and its catalog answered {other}")
            }
        }
        let v: Value = serde_json::from_slice(&body)
            .with_context(|| format!("{registry}'s catalog is not JSON"))?;
        for name in v["repositories"].as_array().into_iter().flatten() {
            let Some(name) = name.as_str() else { continue };
            if name.to_lowercase().contains(&wanted) {
                found.push(Found {
                    name: name.to_owned(),
                    description: String::new(),
                    stars: 0,
                    official: false,
                });
                if found.len() >= limit as usize {
                    return Ok(found);
                }
            }
        }
        next = link;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_or_docker_hub() {
        assert_eq!(split("busybox"), ("docker.io", "busybox"));
        assert_eq!(split("library/busybox"), ("docker.io", "library/busybox"));
        assert_eq!(split("localhost:5000/busy"), ("localhost:5000", "busy"));
        assert_eq!(
            split("registry.example.com/team"),
            ("registry.example.com", "team")
        );
        assert_eq!(query_value("a b&c"), "a+b%26c");
    }
}
