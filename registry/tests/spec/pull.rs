//! §Pull: the API version check (end-1), pulling manifests (end-3) and blobs (end-2), HEAD
//! requests, and Range requests on blobs.

use serde_json::json;

use crate::api::{
    Api, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER, OCI_MANIFEST, Resp, blob, config_blob, descriptor, image_index, repo, sha256,
    sha512,
};
use crate::harness::Target;

// §Determining Support: `GET /v2/` answers 200. §Legacy Docker support HTTP headers: docker
// checks `Docker-Distribution-API-Version: registry/2.0` before trusting the endpoint.
spec!(api_version_check);
async fn api_version_check(t: &Target) -> Result<(), String> {
    let resp = Api::new(t)?.get("/v2/").await?;
    resp.expect(200)?;
    let version = resp.require("Docker-Distribution-API-Version")?;
    ensure!(version == "registry/2.0", "API version {version:?}");
    Ok(())
}

/// Checks a manifest response: the exact bytes pushed, their type and digest.
fn check_manifest_response(resp: &Resp, body: &[u8], media_type: &str) -> Result<(), String> {
    resp.expect(200)?;
    ensure!(
        resp.body == body,
        "{}: body differs from the pushed bytes: {}",
        resp.request,
        resp.text()
    );
    let content_type = resp.require("Content-Type")?;
    ensure!(
        content_type == media_type,
        "{}: Content-Type {content_type:?}, want {media_type:?}",
        resp.request
    );
    let digest = resp.require("Docker-Content-Digest")?;
    ensure!(
        digest == sha256(body),
        "{}: Docker-Content-Digest {digest}, want {}",
        resp.request,
        sha256(body)
    );
    Ok(())
}

// §Pulling manifests: a GET of an existing manifest by tag MUST give the manifest with 200.
spec!(manifest_get_by_tag);
async fn manifest_get_by_tag(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("get-by-tag");
    let image = api.push_image(&repo, "v1").await?;
    let resp = api.get_manifest(&repo, "v1").await?;
    check_manifest_response(&resp, &image.manifest, OCI_MANIFEST)
}

// §Pulling manifests: `<reference>` MAY be the manifest's digest.
spec!(manifest_get_by_digest);
async fn manifest_get_by_digest(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("get-by-digest");
    let image = api.push_image(&repo, "v1").await?;
    let resp = api.get_manifest(&repo, &image.digest).await?;
    check_manifest_response(&resp, &image.manifest, OCI_MANIFEST)
}

// §Checking if content exists: HEAD of an existing manifest MUST answer 200, with the digest
// and the size (SHOULD), and no body; by tag and by digest alike.
spec!(manifest_head_by_tag_and_digest);
async fn manifest_head_by_tag_and_digest(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("head-manifest");
    let image = api.push_image(&repo, "v1").await?;
    for reference in ["v1", image.digest.as_str()] {
        let resp = api.head_manifest(&repo, reference).await?;
        resp.expect(200)?;
        ensure!(resp.body.is_empty(), "{}: HEAD has a body", resp.request);
        let digest = resp.require("Docker-Content-Digest")?;
        ensure!(digest == image.digest, "{}: digest {digest}", resp.request);
        let length = resp.require("Content-Length")?;
        ensure!(
            length == image.manifest.len().to_string(),
            "{}: Content-Length {length}, want {}",
            resp.request,
            image.manifest.len()
        );
        let content_type = resp.require("Content-Type")?;
        ensure!(
            content_type == OCI_MANIFEST,
            "{}: Content-Type {content_type}",
            resp.request
        );
    }
    Ok(())
}

// §Pulling manifests: a manifest not found MUST give 404 (code-7 MANIFEST_UNKNOWN), by tag or
// digest; §Checking if content exists: HEAD gives 404 too.
spec!(manifest_unknown_is_404);
async fn manifest_unknown_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("unknown-manifest");
    api.push_image(&repo, "v1").await?;
    for reference in ["v2".to_owned(), sha256(&blob(64))] {
        let resp = api.get_manifest(&repo, &reference).await?;
        resp.expect_error(404, "MANIFEST_UNKNOWN")?;
        let resp = api.head_manifest(&repo, &reference).await?;
        resp.expect(404)?;
        ensure!(resp.body.is_empty(), "{}: HEAD has a body", resp.request);
    }
    Ok(())
}

// §Pulling manifests: the digest of a blob that is not a manifest names no manifest (404).
spec!(
    manifest_named_by_blob_digest_is_404,
    distribution_differs = "§Pulling manifests: a manifest not found MUST give 404; distribution \
                            2.8 tries to parse the layer blob as a manifest and answers 500 UNKNOWN"
);
async fn manifest_named_by_blob_digest_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("manifest-by-blob-digest");
    let image = api.push_image(&repo, "v1").await?;
    let layer = sha256(&image.layer);
    api.get_manifest(&repo, &layer)
        .await?
        .expect_error(404, "MANIFEST_UNKNOWN")?;
    api.head_manifest(&repo, &layer).await?.expect(404)?;
    Ok(())
}

// §Pulling manifests: a repository that was never pushed has no manifests (404).
spec!(manifest_of_unknown_repository_is_404);
async fn manifest_of_unknown_repository_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let resp = api.get_manifest(&repo("never-pushed"), "latest").await?;
    resp.expect(404)?;
    let codes = resp.error_codes()?;
    ensure!(
        codes
            .iter()
            .any(|c| c == "NAME_UNKNOWN" || c == "MANIFEST_UNKNOWN"),
        "codes {codes:?}, want NAME_UNKNOWN or MANIFEST_UNKNOWN"
    );
    Ok(())
}

// §Definitions (Repository): content is scoped to its repository; a manifest pushed to one
// repository is "not found in the repository" of another (404).
spec!(manifest_is_scoped_to_its_repository);
async fn manifest_is_scoped_to_its_repository(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (first, second) = (repo("scope-manifest-a"), repo("scope-manifest-b"));
    let image = api.push_image(&first, "v1").await?;
    api.push_image(&second, "other").await?;
    let resp = api.get_manifest(&second, &image.digest).await?;
    resp.expect_error(404, "MANIFEST_UNKNOWN")?;
    api.get_manifest(&second, "v1").await?.expect(404)?;
    Ok(())
}

// §Pushing Manifests: the registry MUST store the manifest in the exact byte representation
// provided; the digest is that of those bytes, whatever their whitespace or key order.
spec!(manifest_bytes_are_kept_exactly);
async fn manifest_bytes_are_kept_exactly(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("byte-exact");
    let config = config_blob();
    let layer = blob(300);
    api.push_blob(&repo, &config).await?;
    api.push_blob(&repo, &layer).await?;
    let manifest = format!(
        "{{\n   \"schemaVersion\" :2,\"layers\": [ {{\"size\":{},\"digest\":\"{}\",\"mediaType\":\
         \"{OCI_LAYER}\"}} ],\n\t\"mediaType\": \"{OCI_MANIFEST}\",\n  \"config\": {{ \
         \"mediaType\": \"{OCI_CONFIG}\", \"size\": {}, \"digest\": \"{}\" }}  }}\n\n",
        layer.len(),
        sha256(&layer),
        config.len(),
        sha256(&config),
    );
    let digest = api
        .push_manifest(&repo, "odd", OCI_MANIFEST, manifest.as_bytes())
        .await?;
    for reference in ["odd", digest.as_str()] {
        let resp = api.get_manifest(&repo, reference).await?;
        check_manifest_response(&resp, manifest.as_bytes(), OCI_MANIFEST)?;
    }
    Ok(())
}

// §Pulling manifests: the Content-Type SHOULD match what the client pushed; an OCI index comes
// back as an OCI index, byte for byte.
spec!(oci_index_keeps_its_media_type);
async fn oci_index_keeps_its_media_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("oci-index");
    let image = api.push_image(&repo, "amd64").await?;
    let index = image_index(&[&image.manifest]);
    let digest = api.push_manifest(&repo, "multi", OCI_INDEX, &index).await?;
    for reference in ["multi", digest.as_str()] {
        let resp = api.get_manifest(&repo, reference).await?;
        check_manifest_response(&resp, &index, OCI_INDEX)?;
    }
    Ok(())
}

/// Pushes a Docker schema 2 image; returns its manifest.
async fn push_docker_image(api: &Api, repo: &str, tag: &str) -> Result<Vec<u8>, String> {
    let config = config_blob();
    let layer = blob(700);
    api.push_blob(repo, &config).await?;
    api.push_blob(repo, &layer).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &layer)],
    })
    .to_string()
    .into_bytes();
    api.push_manifest(repo, tag, DOCKER_MANIFEST, &manifest)
        .await?;
    Ok(manifest)
}

// The same for a Docker image manifest (schema 2), which docker still pushes.
spec!(docker_manifest_keeps_its_media_type);
async fn docker_manifest_keeps_its_media_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("docker-manifest");
    let manifest = push_docker_image(&api, &repo, "v1").await?;
    for reference in ["v1".to_owned(), sha256(&manifest)] {
        let resp = api.get_manifest(&repo, &reference).await?;
        check_manifest_response(&resp, &manifest, DOCKER_MANIFEST)?;
    }
    Ok(())
}

// The same for a Docker manifest list.
spec!(docker_manifest_list_keeps_its_media_type);
async fn docker_manifest_list_keeps_its_media_type(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("docker-list");
    let manifest = push_docker_image(&api, &repo, "amd64").await?;
    let mut entry = descriptor(DOCKER_MANIFEST, &manifest);
    entry["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let list = json!({ "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [entry] })
        .to_string()
        .into_bytes();
    let digest = api
        .push_manifest(&repo, "multi", DOCKER_LIST, &list)
        .await?;
    for reference in ["multi", digest.as_str()] {
        let resp = api.get_manifest(&repo, reference).await?;
        check_manifest_response(&resp, &list, DOCKER_LIST)?;
    }
    Ok(())
}

// §Pulling blobs: a GET of an existing blob MUST give the blob with 200; a
// `Docker-Content-Digest`, if present, MUST match the body.
spec!(blob_get);
async fn blob_get(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("blob-get");
    let data = blob(5000);
    let digest = api.push_blob(&repo, &data).await?;
    let resp = api.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
    resp.expect(200)?;
    ensure!(
        resp.body == data,
        "body differs ({} bytes)",
        resp.body.len()
    );
    if let Some(header) = resp.header("Docker-Content-Digest") {
        ensure!(header == digest, "Docker-Content-Digest {header}");
    }
    Ok(())
}

// §Checking if content exists: HEAD of an existing blob MUST answer 200, with its digest and
// size (SHOULD) and no body.
spec!(blob_head);
async fn blob_head(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("blob-head");
    let data = blob(4321);
    let digest = api.push_blob(&repo, &data).await?;
    let resp = api.head(&format!("/v2/{repo}/blobs/{digest}")).await?;
    resp.expect(200)?;
    ensure!(resp.body.is_empty(), "HEAD has a body");
    let length = resp.require("Content-Length")?;
    ensure!(length == "4321", "Content-Length {length}");
    let header = resp.require("Docker-Content-Digest")?;
    ensure!(header == digest, "Docker-Content-Digest {header}");
    Ok(())
}

// §Pulling blobs: a blob not found MUST give 404 (code-1 BLOB_UNKNOWN); §Checking if content
// exists: HEAD gives 404 too.
spec!(blob_unknown_is_404);
async fn blob_unknown_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("blob-unknown");
    api.push_blob(&repo, &blob(10)).await?;
    let path = format!("/v2/{repo}/blobs/{}", sha256(&blob(10)));
    api.get(&path).await?.expect_error(404, "BLOB_UNKNOWN")?;
    let resp = api.head(&path).await?;
    resp.expect(404)?;
    ensure!(resp.body.is_empty(), "HEAD has a body");
    Ok(())
}

// §Definitions (Repository): a blob pushed to one repository is not found in another one; a
// registry that served it would let any repository read every other's layers.
spec!(blob_is_scoped_to_its_repository);
async fn blob_is_scoped_to_its_repository(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (first, second) = (repo("scope-blob-a"), repo("scope-blob-b"));
    let digest = api.push_blob(&first, &blob(100)).await?;
    api.push_blob(&second, &blob(100)).await?;
    let path = format!("/v2/{second}/blobs/{digest}");
    api.get(&path).await?.expect_error(404, "BLOB_UNKNOWN")?;
    api.head(&path).await?.expect(404)?;
    Ok(())
}

// §Pulling blobs: a registry SHOULD support Range requests (RFC 9110); clients resume pulls with
// them (§Resumable Pull). A satisfiable range, closed or open (`bytes=N-`, what a resuming
// client sends), gives 206 with a Content-Range.
spec!(blob_range_is_206);
async fn blob_range_is_206(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("blob-range");
    let data = blob(1000);
    let digest = api.push_blob(&repo, &data).await?;
    let path = format!("/v2/{repo}/blobs/{digest}");
    for (range, part, content_range) in [
        ("bytes=100-199", 100..200, "bytes 100-199/1000"),
        ("bytes=600-", 600..1000, "bytes 600-999/1000"),
    ] {
        let headers = [("Range", range)];
        let resp = api
            .send(reqwest::Method::GET, &path, &headers, Vec::new())
            .await?;
        resp.expect(206)?;
        ensure!(resp.body == data[part], "body of {range} differs");
        let header = resp.require("Content-Range")?;
        ensure!(
            header == content_range,
            "Content-Range {header:?} for {range}"
        );
    }
    Ok(())
}

// RFC 9110 §15.5.17, which the spec adopts for blobs: a range past the end gives 416 with
// `Content-Range: bytes */<size>`.
spec!(
    blob_unsatisfiable_range_is_416,
    distribution_differs = "RFC 9110 §15.5.17 (adopted by §Pulling blobs): 416 with \
                            Content-Range bytes */<size>; distribution 2.8 sends its 416 with the \
                            blob's Content-Length over a shorter text body, a broken response"
);
async fn blob_unsatisfiable_range_is_416(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("blob-range-416");
    let data = blob(1000);
    let digest = api.push_blob(&repo, &data).await?;
    let path = format!("/v2/{repo}/blobs/{digest}");
    let range = [("Range", "bytes=1000-")];
    let resp = api
        .send(reqwest::Method::GET, &path, &range, Vec::new())
        .await?;
    resp.expect(416)?;
    let content_range = resp.require("Content-Range")?;
    ensure!(
        content_range == "bytes */1000",
        "Content-Range {content_range:?}"
    );
    Ok(())
}

// §Pulling blobs, apdx-3 (image-spec digests): sha512 is a registered algorithm; a blob pushed
// under its sha512 digest is pulled by that digest.
spec!(sha512_blob_roundtrip);
async fn sha512_blob_roundtrip(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("sha512-blob");
    let data = blob(2048);
    let digest = sha512(&data);
    let session = api.start_upload(&repo).await?;
    api.finish(&session, &digest, &data).await?.expect(201)?;
    let resp = api.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
    resp.expect(200)?;
    ensure!(resp.body == data, "body differs");
    api.head(&format!("/v2/{repo}/blobs/{digest}"))
        .await?
        .expect(200)?;
    Ok(())
}

// §Pushing Manifests: `<reference>` MAY be a digest, and the `Docker-Content-Digest` returned
// MUST equal the client's; pushing by a sha512 digest keeps that digest as the manifest's name.
spec!(
    sha512_manifest_reference,
    distribution_differs = "§Pushing Manifests: the digest returned MUST equal the client \
                            provided one; distribution 2.8 digests every manifest with sha256 \
                            and rejects a sha512 reference with DIGEST_INVALID"
);
async fn sha512_manifest_reference(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("sha512-manifest");
    let image = api.push_image(&repo, "v1").await?;
    let digest = sha512(&image.manifest);
    let resp = api
        .put_manifest(&repo, &digest, OCI_MANIFEST, &image.manifest)
        .await?;
    resp.expect(201)?;
    let header = resp.require("Docker-Content-Digest")?;
    ensure!(
        header == digest,
        "Docker-Content-Digest {header}, want {digest}"
    );
    let resp = api.get_manifest(&repo, &digest).await?;
    resp.expect(200)?;
    ensure!(resp.body == image.manifest, "body differs");
    Ok(())
}
