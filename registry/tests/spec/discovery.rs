//! §Content Discovery: listing tags (end-8a, end-8b) with `n`, `last` and `Link`, listing
//! referrers (end-12a, end-12b), and docker's repository catalog.

use serde_json::{Value, json};

use crate::api::{
    Api, Image, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Resp, artifact, blob, config_blob, descriptor,
    image_manifest, next_link, repo, sha256, strings,
};
use crate::harness::Target;

/// Tags `tags` on one image in a fresh repository; returns the repository.
async fn repo_with_tags(api: &Api, label: &str, tags: &[&str]) -> Result<String, String> {
    let repo = repo(label);
    let image = api.push_image(&repo, tags[0]).await?;
    for tag in &tags[1..] {
        api.push_manifest(&repo, tag, OCI_MANIFEST, &image.manifest)
            .await?;
    }
    Ok(repo)
}

/// Pushed in this order; lexical order is `TAGS_SORTED`.
const TAGS: [&str; 6] = ["v10", "beta", "alpha", "v2", "v1", "latest"];
const TAGS_SORTED: [&str; 6] = ["alpha", "beta", "latest", "v1", "v10", "v2"];

// §Listing Tags: 200 with `{"name": <name>, "tags": [...]}`, the tags in lexical order (all
// lowercase here, see main.rs on "case-insensitive").
spec!(
    tags_list_is_sorted,
    distribution_differs = "§Listing Tags: the tags MUST be in lexical order; distribution 2.8 \
                            lists them in the storage's directory order"
);
async fn tags_list_is_sorted(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-sorted", &TAGS).await?;
    let (tags, _) = api.tags(&repo, "").await?;
    ensure!(tags == TAGS_SORTED, "tags {tags:?}, want {TAGS_SORTED:?}");
    Ok(())
}

// §Listing Tags (end-8b): with `n`, the first `n` tags; fewer only with a `Link` header.
spec!(
    tags_list_n_limits,
    distribution_differs = "§Listing Tags: the response MUST include <int> results (fewer only \
                            with a Link); distribution 2.8 ignores n and lists every tag"
);
async fn tags_list_n_limits(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-n", &TAGS).await?;
    let (tags, _) = api.tags(&repo, "?n=2").await?;
    ensure!(
        tags == TAGS_SORTED[..2],
        "tags {tags:?}, want the first two"
    );
    Ok(())
}

// §Listing Tags (end-8b): with `n` and `last`, up to `n` tags after `last`, not including it.
spec!(
    tags_list_n_and_last_paginate,
    distribution_differs = "§Listing Tags: up to <int> tags after <tagname> MUST be returned in \
                            lexical order; distribution 2.8 ignores n and last"
);
async fn tags_list_n_and_last_paginate(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-last", &TAGS).await?;
    let (tags, _) = api.tags(&repo, "?n=2&last=beta").await?;
    ensure!(tags == ["latest", "v1"], "tags {tags:?}, want [latest, v1]");
    let (tags, _) = api.tags(&repo, "?n=10&last=v10").await?;
    ensure!(tags == ["v2"], "tags {tags:?}, want [v2]");
    Ok(())
}

// §Listing Tags: when using `last`, `n` is OPTIONAL; the rest of the list follows `last`.
spec!(
    tags_list_last_without_n,
    distribution_differs = "§Listing Tags: the tags returned begin after <tagname>; distribution \
                            2.8 ignores last"
);
async fn tags_list_last_without_n(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-last-only", &TAGS).await?;
    let (tags, _) = api.tags(&repo, "?last=latest").await?;
    ensure!(
        tags == TAGS_SORTED[3..],
        "tags {tags:?}, want {:?}",
        &TAGS_SORTED[3..]
    );
    Ok(())
}

// §Listing Tags: a `Link` header, if included, MUST follow RFC 5988 with `rel="next"`; paging by
// it visits every tag once, in order. Clients should prefer it over `last`, so wharf sends it
// whenever more tags remain.
spec!(
    tags_list_link_header_pages_through,
    distribution_differs = "§Listing Tags: a page of n tags is followed through Link rel=next; \
                            distribution 2.8 does not paginate tags and sends no Link"
);
async fn tags_list_link_header_pages_through(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-link", &TAGS).await?;
    let mut seen = Vec::new();
    let mut next = Some(format!("/v2/{repo}/tags/list?n=4"));
    while let Some(url) = next {
        ensure!(
            seen.len() <= TAGS.len(),
            "pagination does not end: {seen:?}"
        );
        let resp = api.get(&url).await?;
        resp.expect(200)?;
        let page = strings(&resp.json()?["tags"]);
        ensure!(page.len() <= 4, "page of {} tags for n=4", page.len());
        seen.extend(page);
        next = next_link(&resp)?;
        if seen.len() < TAGS.len() {
            ensure!(next.is_some(), "no Link after {seen:?}");
        }
    }
    ensure!(seen == TAGS_SORTED, "paged through {seen:?}");
    Ok(())
}

// §Listing Tags: when `n` is zero the list MUST be empty and there MUST NOT be a Link header.
spec!(
    tags_list_n_zero_is_empty,
    distribution_differs = "§Listing Tags: n=0 MUST return an empty list; distribution 2.8 \
                            ignores n and lists every tag"
);
async fn tags_list_n_zero_is_empty(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-n0", &TAGS).await?;
    let (tags, resp) = api.tags(&repo, "?n=0").await?;
    ensure!(tags.is_empty(), "tags {tags:?} for n=0");
    ensure!(resp.header("Link").is_none(), "Link header for n=0");
    Ok(())
}

// code-9 NAME_UNKNOWN: the tags of a repository that does not exist (end-8a failure 404).
spec!(tags_list_of_unknown_repository_is_404);
async fn tags_list_of_unknown_repository_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let resp = api
        .get(&format!("/v2/{}/tags/list", repo("no-such-repo")))
        .await?;
    resp.expect_error(404, "NAME_UNKNOWN")
}

// §Listing Tags: "assuming a repository is found" the answer MUST be 200, and the list MAY be
// empty: a repository holding only untagged manifests has an empty tag list.
spec!(
    tags_list_of_untagged_repository_is_empty,
    distribution_differs = "§Listing Tags: a found repository MUST get 200, its list MAY be \
                            empty; distribution 2.8 answers NAME_UNKNOWN for a repository that \
                            has manifests but no tags"
);
async fn tags_list_of_untagged_repository_is_empty(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("tags-untagged");
    let config = config_blob();
    let layer = blob(100);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = image_manifest(&config, &layer);
    api.push_manifest(&repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await?;
    let (tags, _) = api.tags(&repo, "").await?;
    ensure!(tags.is_empty(), "tags {tags:?}");
    Ok(())
}

/// `GET /v2/_catalog<query>`: the repositories, and the response.
async fn catalog(api: &Api, query: &str) -> Result<(Vec<String>, Resp), String> {
    let resp = api.get(&format!("/v2/_catalog{query}")).await?;
    resp.expect(200)?;
    let repositories = strings(&resp.json()?["repositories"]);
    Ok((repositories, resp))
}

// Docker's `GET /v2/_catalog` (apdx-1; not in v1.1): repositories in lexical order, `n` of them
// after `last`; a full page that is not the last has a `Link: <…>; rel="next"` header, and
// following it continues after the page. The three repositories sort right after `prefix`,
// which no other test's repository starts with.
spec!(catalog_paginates);
async fn catalog_paginates(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let prefix = repo("catalog");
    let want: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{prefix}/{n}"))
        .collect();
    for name in &want {
        api.push_blob(name, &blob(10)).await?;
    }
    let (names, _) = catalog(&api, &format!("?n=3&last={prefix}")).await?;
    ensure!(names == want, "repositories {names:?}, want {want:?}");
    let (names, resp) = catalog(&api, &format!("?n=1&last={}", want[0])).await?;
    ensure!(
        names == want[1..2],
        "repositories {names:?} after {}",
        want[0]
    );
    let next = next_link(&resp)?.ok_or("no Link header on a full page")?;
    let resp = api.get(&next).await?;
    resp.expect(200)?;
    let names = strings(&resp.json()?["repositories"]);
    ensure!(names.first() == Some(&want[2]), "{next} gave {names:?}");
    Ok(())
}

/// `GET /v2/<repo>/referrers/<digest><query>`, requiring a 200 image index.
async fn referrers(api: &Api, repo: &str, digest: &str, query: &str) -> Result<Resp, String> {
    let resp = api
        .get(&format!("/v2/{repo}/referrers/{digest}{query}"))
        .await?;
    resp.expect(200)?;
    let content_type = resp.require("Content-Type")?;
    ensure!(
        content_type == OCI_INDEX,
        "referrers Content-Type {content_type:?}"
    );
    let index = resp.json()?;
    ensure!(
        index["schemaVersion"] == 2 && index["mediaType"] == OCI_INDEX,
        "referrers response is not an image index: {index}"
    );
    Ok(resp)
}

/// The descriptors of a referrers response.
fn descriptors(resp: &Resp) -> Result<Vec<Value>, String> {
    resp.json()?["manifests"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("{}: no manifests array", resp.request))
}

/// Pushes an artifact manifest with `subject`, by digest; returns it.
async fn push_artifact(
    api: &Api,
    repo: &str,
    subject: &Image,
    artifact_type: Option<&str>,
    config_type: &str,
) -> Result<Vec<u8>, String> {
    api.push_blob(repo, b"{}").await?;
    let manifest = artifact(&subject.manifest, artifact_type, config_type);
    api.push_manifest(repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await?;
    Ok(manifest)
}

const SBOM: &str = "application/vnd.spec.sbom.v1+json";
const SIGNATURE: &str = "application/vnd.spec.signature.v1+json";

// §Listing Referrers: with no referrers, 200 and an empty image index (a registry supporting the
// API MUST NOT answer 404).
spec!(
    referrers_of_unreferenced_manifest_is_empty_index,
    distribution_differs = "§Listing Referrers: MUST answer 200 with an empty index; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_of_unreferenced_manifest_is_empty_index(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-none");
    let image = api.push_image(&repo, "v1").await?;
    let resp = referrers(&api, &repo, &image.digest, "").await?;
    let found = descriptors(&resp)?;
    ensure!(found.is_empty(), "referrers {found:?}");
    Ok(())
}

// §Listing Referrers: each manifest whose `subject` is the digest is listed by a descriptor with
// its mediaType, digest and size, its `artifactType` and its annotations.
spec!(
    referrers_list_manifests_with_subject,
    distribution_differs = "§Listing Referrers: end-12a MUST list manifests with that subject; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_list_manifests_with_subject(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-list");
    let image = api.push_image(&repo, "v1").await?;
    let sbom = push_artifact(&api, &repo, &image, Some(SBOM), OCI_CONFIG).await?;
    let signature = push_artifact(&api, &repo, &image, Some(SIGNATURE), OCI_CONFIG).await?;
    let resp = referrers(&api, &repo, &image.digest, "").await?;
    let mut found = descriptors(&resp)?;
    // Sorted by artifactType: "…sbom…" before "…signature…".
    found.sort_by_key(|d| d["artifactType"].as_str().map(str::to_owned));
    ensure!(found.len() == 2, "referrers {found:?}");
    for (descriptor, (manifest, artifact_type)) in
        found.iter().zip([(&sbom, SBOM), (&signature, SIGNATURE)])
    {
        let pushed: Value = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
        let want = json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha256(manifest),
            "size": manifest.len(),
            "artifactType": artifact_type,
            "annotations": pushed["annotations"],
        });
        ensure!(*descriptor == want, "descriptor {descriptor}, want {want}");
    }
    Ok(())
}

// §Listing Referrers: without an `artifactType` in the manifest, the descriptor's artifactType
// MUST be the config's mediaType.
spec!(
    referrers_artifact_type_defaults_to_config_type,
    distribution_differs = "§Listing Referrers: artifactType MUST fall back to the config \
                            mediaType; distribution 2.8 has no referrers API (404)"
);
async fn referrers_artifact_type_defaults_to_config_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-config-type");
    let image = api.push_image(&repo, "v1").await?;
    let config_type = "application/vnd.spec.config.v1+json";
    push_artifact(&api, &repo, &image, None, config_type).await?;
    let resp = referrers(&api, &repo, &image.digest, "").await?;
    let found = descriptors(&resp)?;
    ensure!(found.len() == 1, "referrers {found:?}");
    ensure!(
        found[0]["artifactType"] == config_type,
        "artifactType {}, want {config_type}",
        found[0]["artifactType"]
    );
    Ok(())
}

// §Listing Referrers: an index can refer to a subject too; without an artifactType its
// descriptor MUST omit artifactType.
spec!(
    referrers_include_index_without_artifact_type,
    distribution_differs = "§Listing Referrers: indexes with a subject MUST be listed; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_include_index_without_artifact_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-index");
    let image = api.push_image(&repo, "v1").await?;
    let other = api.push_image(&repo, "v2").await?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, &other.manifest)],
        "subject": descriptor(OCI_MANIFEST, &image.manifest),
        "annotations": { "spec.kind": "index" },
    })
    .to_string()
    .into_bytes();
    api.push_manifest(&repo, &sha256(&index), OCI_INDEX, &index)
        .await?;
    let resp = referrers(&api, &repo, &image.digest, "").await?;
    let found = descriptors(&resp)?;
    let want = json!({
        "mediaType": OCI_INDEX,
        "digest": sha256(&index),
        "size": index.len(),
        "annotations": { "spec.kind": "index" },
    });
    ensure!(
        found == [want.clone()],
        "referrers {found:?}, want [{want}]"
    );
    Ok(())
}

// §Listing Referrers (end-12b): filtering on artifactType, when applied, MUST be announced with
// `OCI-Filters-Applied: artifactType`.
spec!(
    referrers_filter_by_artifact_type,
    distribution_differs = "§Listing Referrers: end-12b filtering with OCI-Filters-Applied; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_filter_by_artifact_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-filter");
    let image = api.push_image(&repo, "v1").await?;
    let sbom = push_artifact(&api, &repo, &image, Some(SBOM), OCI_CONFIG).await?;
    push_artifact(&api, &repo, &image, Some(SIGNATURE), OCI_CONFIG).await?;
    let query = format!("?artifactType={SBOM}");
    let resp = referrers(&api, &repo, &image.digest, &query).await?;
    let applied = resp.require("OCI-Filters-Applied")?;
    ensure!(applied == "artifactType", "OCI-Filters-Applied {applied:?}");
    let found = descriptors(&resp)?;
    ensure!(
        found.len() == 1 && found[0]["digest"] == sha256(&sbom),
        "filtered referrers {found:?}"
    );
    Ok(())
}

// §Push: referrers may be pushed before their subject; they are listed once it exists (and
// before).
spec!(
    referrers_of_subject_pushed_later,
    distribution_differs = "§Listing Referrers: a referrer pushed before its subject is listed; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_of_subject_pushed_later(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-early");
    let config = config_blob();
    let layer = blob(100);
    let manifest = image_manifest(&config, &layer);
    let subject = Image {
        digest: sha256(&manifest),
        config,
        layer,
        manifest,
    };
    let sbom = push_artifact(&api, &repo, &subject, Some(SBOM), OCI_CONFIG).await?;
    let early = referrers(&api, &repo, &subject.digest, "").await?;
    ensure!(descriptors(&early)?.len() == 1, "not listed before subject");
    api.push_blob(&repo, &subject.config).await?;
    api.push_blob(&repo, &subject.layer).await?;
    api.push_manifest(&repo, "v1", OCI_MANIFEST, &subject.manifest)
        .await?;
    let resp = referrers(&api, &repo, &subject.digest, "").await?;
    let found = descriptors(&resp)?;
    ensure!(
        found.len() == 1 && found[0]["digest"] == sha256(&sbom),
        "referrers {found:?}"
    );
    Ok(())
}

// §Listing Referrers: the descriptors are of manifests "in the same <name> namespace".
spec!(
    referrers_are_scoped_to_repository,
    distribution_differs = "§Listing Referrers: only referrers in <name> are listed; \
                            distribution 2.8 has no referrers API (404)"
);
async fn referrers_are_scoped_to_repository(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (first, second) = (repo("referrers-scope-a"), repo("referrers-scope-b"));
    let image = api.push_image(&first, "v1").await?;
    api.push_blob(&second, &image.config).await?;
    api.push_blob(&second, &image.layer).await?;
    api.push_manifest(&second, "v1", OCI_MANIFEST, &image.manifest)
        .await?;
    push_artifact(&api, &first, &image, Some(SBOM), OCI_CONFIG).await?;
    let resp = referrers(&api, &second, &image.digest, "").await?;
    let found = descriptors(&resp)?;
    ensure!(
        found.is_empty(),
        "referrers from another repository: {found:?}"
    );
    Ok(())
}

// §Listing Referrers: a `<digest>` with an invalid syntax MUST get 400.
spec!(
    referrers_of_invalid_digest_is_400,
    distribution_differs = "§Listing Referrers: an invalid digest MUST get 400; distribution 2.8 \
                            has no referrers route and answers 404"
);
async fn referrers_of_invalid_digest_is_400(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referrers-bad-digest");
    api.push_image(&repo, "v1").await?;
    for digest in ["sha256:abc", "latest", "sha256:zz"] {
        let resp = api.get(&format!("/v2/{repo}/referrers/{digest}")).await?;
        resp.expect(400)?;
    }
    Ok(())
}

// A registry's own page limit (`limits.list_max_entries`): a listing without `n`, or with a
// larger one, stops at it, and says where the rest is with a `Link` (wharf once stopped at
// 10,000 tags with no `Link`, and skopeo saw 10,000 of 10,005). Paging by the links visits
// everything once.
async fn pages_stop_at_the_limit_and_link_on(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo_with_tags(&api, "tags-limit", &TAGS).await?;
    for start in [
        format!("/v2/{repo}/tags/list"),
        format!("/v2/{repo}/tags/list?n=100"),
    ] {
        let mut seen = Vec::new();
        let mut next = Some(start.clone());
        while let Some(url) = next {
            ensure!(seen.len() <= TAGS.len(), "{start}: no end: {seen:?}");
            let resp = api.get(&url).await?;
            resp.expect(200)?;
            let page = strings(&resp.json()?["tags"]);
            ensure!(
                page.len() <= 4,
                "{url}: a page of {} tags, the limit is 4",
                page.len()
            );
            seen.extend(page);
            next = next_link(&resp)?;
            ensure!(
                next.is_some() || seen.len() == TAGS.len(),
                "{url}: no Link after {seen:?}"
            );
        }
        ensure!(seen == TAGS_SORTED, "{start}: paged through {seen:?}");
    }
    let resp = api.get("/v2/_catalog").await?;
    resp.expect(200)?;
    ensure!(
        strings(&resp.json()?["repositories"]).len() <= 4,
        "a catalog page over the limit"
    );
    Ok(())
}

mod pages_stop_at_the_limit_and_link_on {
    #[tokio::test]
    async fn wharf() {
        if let Some(t) = crate::harness::wharf_with_page_limit(4) {
            crate::harness::expect_pass(t, super::pages_stop_at_the_limit_and_link_on(t).await);
        }
    }
}

// docker's search API (`docker search REGISTRY/TERM` asks `GET /v1/search?q=TERM&n=25`):
// repositories whose name holds the term, any case, with their description (the latest tag's
// `org.opencontainers.image.description` annotation, else the image's label of that name) and
// docker's page fields. Distribution 2.8 has no search, so this runs on wharf alone.
async fn search_finds_names_and_descriptions(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let token = repo("search").replace("spec/search-", "srch");
    let (labelled, annotated, plain) = (
        format!("spec/{token}-labelled"),
        format!("spec/{token}-annotated"),
        format!("spec/{token}-plain"),
    );
    // A label in the config.
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.description": "from the label"}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .map_err(|e| e.to_string())?;
    let layer = blob(100);
    api.push_blob(&labelled, &config).await?;
    api.push_blob(&labelled, &layer).await?;
    api.push_manifest(
        &labelled,
        "v1",
        OCI_MANIFEST,
        &image_manifest(&config, &layer),
    )
    .await?;
    // An annotation on the manifest, pushed after a tag without one: the latest tag counts
    // (the older tag's name sorts first, so a tie broken by name would pick it).
    let image = api.push_image(&annotated, "a-old").await?;
    let mut m: Value = serde_json::from_slice(&image.manifest).map_err(|e| e.to_string())?;
    m["annotations"] = json!({"org.opencontainers.image.description": "from the annotation"});
    let m = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    api.push_manifest(&annotated, "z-new", OCI_MANIFEST, &m)
        .await?;
    api.push_image(&plain, "v1").await?;
    // A manifest over 64 KiB is not read for a description (one search reads up to 100).
    let huge = format!("spec/{token}-zhuge");
    let image = api.push_image(&huge, "v1").await?;
    let mut m: Value = serde_json::from_slice(&image.manifest).map_err(|e| e.to_string())?;
    m["annotations"] = json!({"org.opencontainers.image.description": "x".repeat(70 << 10)});
    let m = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    api.push_manifest(&huge, "v2", OCI_MANIFEST, &m).await?;

    let resp = api
        .get(&format!("/v1/search?q={}&n=25", token.to_uppercase()))
        .await?;
    resp.expect(200)?;
    let body = resp.json()?;
    ensure!(body["num_results"] == 4, "{body}");
    ensure!(
        body["page"] == 1 && body["page_size"] == 25 && body["num_pages"] == 1,
        "{body}"
    );
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let found: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["description"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ensure!(
        found
            == [
                (annotated.clone(), "from the annotation".to_owned()),
                (labelled.clone(), "from the label".to_owned()),
                (plain.clone(), String::new()),
                (huge.clone(), String::new()),
            ],
        "{found:?}"
    );
    ensure!(
        results
            .iter()
            .all(|r| r["star_count"] == 0 && r["is_official"] == false),
        "{body}"
    );
    // Pages of 2: the second holds the third and the fourth name.
    let resp = api.get(&format!("/v1/search?q={token}&n=2&page=2")).await?;
    let body = resp.json()?;
    ensure!(body["num_pages"] == 2, "{body}");
    ensure!(
        strings(&json!(body["results"].as_array().map(|a| {
            a.iter().map(|r| r["name"].clone()).collect::<Vec<_>>()
        }))) == [plain.clone(), huge.clone()],
        "{body}"
    );
    Ok(())
}

mod search_finds_names_and_descriptions {
    #[tokio::test]
    async fn wharf() {
        if let Some(t) = crate::harness::wharf() {
            crate::harness::expect_pass(t, super::search_finds_names_and_descriptions(t).await);
        }
    }
}
