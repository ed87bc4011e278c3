//! §Content Management: deleting tags and manifests (end-9) and blobs (end-10).

use crate::api::{Api, OCI_CONFIG, OCI_MANIFEST, artifact, blob, repo, sha256};
use crate::harness::Target;

// §Deleting Manifests: DELETE by digest MUST answer 202; then the digest and every tag
// pointing to it give 404.
spec!(delete_manifest_by_digest);
async fn delete_manifest_by_digest(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-manifest");
    let image = api.push_image(&repo, "v1").await?;
    api.push_manifest(&repo, "stable", OCI_MANIFEST, &image.manifest)
        .await?;
    let path = format!("/v2/{repo}/manifests/{}", image.digest);
    api.delete(&path).await?.expect(202)?;
    for reference in [image.digest.as_str(), "v1", "stable"] {
        let resp = api.get_manifest(&repo, reference).await?;
        resp.expect_error(404, "MANIFEST_UNKNOWN")?;
    }
    Ok(())
}

// §Deleting tags: a registry MAY implement tag deletion; one that does not MUST answer 400 or
// 405, and the tag stays.
spec!(delete_tag_is_202_or_refused);
async fn delete_tag_is_202_or_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-tag-or-not");
    api.push_image(&repo, "v1").await?;
    let resp = api.delete(&format!("/v2/{repo}/manifests/v1")).await?;
    let after = api.get_manifest(&repo, "v1").await?;
    match resp.status {
        202 => after.expect(404).map(drop),
        400 | 405 => after.expect(200).map(drop),
        status => Err(format!(
            "DELETE of a tag: status {status}, want 202, 400 or 405"
        )),
    }
}

// §Deleting tags: DELETE by tag MUST answer 202 and removes that tag only: other tags and the
// manifest itself stay.
spec!(
    delete_tag_removes_only_the_tag,
    distribution_differs = "§Deleting tags: registries MAY implement tag deletion (else 400 or \
                            405); distribution 2.8 does not and answers 400 DIGEST_INVALID"
);
async fn delete_tag_removes_only_the_tag(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-tag");
    let image = api.push_image(&repo, "old").await?;
    api.push_manifest(&repo, "keep", OCI_MANIFEST, &image.manifest)
        .await?;
    api.delete(&format!("/v2/{repo}/manifests/old"))
        .await?
        .expect(202)?;
    api.get_manifest(&repo, "old").await?.expect(404)?;
    api.get_manifest(&repo, "keep").await?.expect(200)?;
    api.get_manifest(&repo, &image.digest).await?.expect(200)?;
    let (tags, _) = api.tags(&repo, "").await?;
    ensure!(tags == ["keep"], "tags {tags:?} after deleting `old`");
    Ok(())
}

// §Deleting Manifests: a manifest the repository does not have gives 404 (MANIFEST_UNKNOWN).
spec!(delete_unknown_manifest_is_404);
async fn delete_unknown_manifest_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-unknown-manifest");
    api.push_image(&repo, "v1").await?;
    let path = format!("/v2/{repo}/manifests/{}", sha256(&blob(50)));
    api.delete(&path)
        .await?
        .expect_error(404, "MANIFEST_UNKNOWN")
}

// §Deleting Manifests: if the repository does not exist, the response MUST be 404.
spec!(delete_manifest_of_unknown_repository_is_404);
async fn delete_manifest_of_unknown_repository_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let path = format!(
        "/v2/{}/manifests/{}",
        repo("delete-no-repo"),
        sha256(&blob(50))
    );
    api.delete(&path).await?.expect(404)?;
    Ok(())
}

// §Deleting Manifests: tags pointing at a deleted manifest are gone from the tag list too,
// while tags of other manifests stay.
spec!(deleted_manifest_leaves_tag_list);
async fn deleted_manifest_leaves_tag_list(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-tag-list");
    let doomed = api.push_image(&repo, "doomed").await?;
    api.push_manifest(&repo, "doomed-too", OCI_MANIFEST, &doomed.manifest)
        .await?;
    api.push_image(&repo, "survivor").await?;
    api.delete(&format!("/v2/{repo}/manifests/{}", doomed.digest))
        .await?
        .expect(202)?;
    let (tags, _) = api.tags(&repo, "").await?;
    ensure!(tags == ["survivor"], "tags {tags:?}");
    Ok(())
}

// A deleted manifest can be pushed again and is served again.
spec!(deleted_manifest_can_be_pushed_again);
async fn deleted_manifest_can_be_pushed_again(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("repush-manifest");
    let image = api.push_image(&repo, "v1").await?;
    api.delete(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await?
        .expect(202)?;
    api.push_manifest(&repo, "v1", OCI_MANIFEST, &image.manifest)
        .await?;
    let resp = api.get_manifest(&repo, "v1").await?;
    resp.expect(200)?;
    ensure!(resp.body == image.manifest, "body differs");
    Ok(())
}

// §Deleting Manifests: deleting in one repository leaves the same manifest in another.
spec!(delete_manifest_keeps_other_repositories);
async fn delete_manifest_keeps_other_repositories(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (first, second) = (repo("delete-shared-a"), repo("delete-shared-b"));
    let image = api.push_image(&first, "v1").await?;
    api.push_blob(&second, &image.config).await?;
    api.push_blob(&second, &image.layer).await?;
    api.push_manifest(&second, "v1", OCI_MANIFEST, &image.manifest)
        .await?;
    api.delete(&format!("/v2/{first}/manifests/{}", image.digest))
        .await?
        .expect(202)?;
    api.get_manifest(&second, "v1").await?.expect(200)?;
    api.get_manifest(&second, &image.digest)
        .await?
        .expect(200)?;
    Ok(())
}

// §Deleting Blobs: DELETE MUST answer 202; the blob is then unknown (404 BLOB_UNKNOWN).
spec!(delete_blob);
async fn delete_blob(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-blob");
    let digest = api.push_blob(&repo, &blob(300)).await?;
    let path = format!("/v2/{repo}/blobs/{digest}");
    api.delete(&path).await?.expect(202)?;
    api.get(&path).await?.expect_error(404, "BLOB_UNKNOWN")?;
    api.head(&path).await?.expect(404)?;
    Ok(())
}

// §Deleting Blobs: if the blob is not found, 404 MUST be returned.
spec!(delete_unknown_blob_is_404);
async fn delete_unknown_blob_is_404(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-unknown-blob");
    api.push_blob(&repo, &blob(10)).await?;
    let path = format!("/v2/{repo}/blobs/{}", sha256(&blob(10)));
    api.delete(&path).await?.expect_error(404, "BLOB_UNKNOWN")
}

// A deleted blob can be uploaded again.
spec!(deleted_blob_can_be_pushed_again);
async fn deleted_blob_can_be_pushed_again(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("repush-blob");
    let data = blob(300);
    let digest = api.push_blob(&repo, &data).await?;
    let path = format!("/v2/{repo}/blobs/{digest}");
    api.delete(&path).await?.expect(202)?;
    api.push_blob(&repo, &data).await?;
    let resp = api.get(&path).await?;
    resp.expect(200)?;
    ensure!(resp.body == data, "body differs");
    Ok(())
}

// §Deleting Blobs: deleting a blob from one repository leaves it in the others that have it.
spec!(delete_blob_keeps_other_repositories);
async fn delete_blob_keeps_other_repositories(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let (first, second) = (repo("delete-blob-a"), repo("delete-blob-b"));
    let data = blob(300);
    let digest = api.push_blob(&first, &data).await?;
    api.push_blob(&second, &data).await?;
    api.delete(&format!("/v2/{first}/blobs/{digest}"))
        .await?
        .expect(202)?;
    let resp = api.get(&format!("/v2/{second}/blobs/{digest}")).await?;
    resp.expect(200)?;
    ensure!(resp.body == data, "body differs");
    Ok(())
}

// §Deleting Manifests with §Listing Referrers: a deleted referrer leaves the referrers list.
spec!(
    deleted_referrer_leaves_referrers,
    distribution_differs = "§Listing Referrers: the list holds the manifests with that subject; \
                            distribution 2.8 has no referrers API (404)"
);
async fn deleted_referrer_leaves_referrers(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("delete-referrer");
    let image = api.push_image(&repo, "v1").await?;
    api.push_blob(&repo, b"{}").await?;
    let manifest = artifact(&image.manifest, Some("application/vnd.spec.x"), OCI_CONFIG);
    let digest = api
        .push_manifest(&repo, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await?;
    let path = format!("/v2/{repo}/referrers/{}", image.digest);
    let before = api.get(&path).await?;
    before.expect(200)?;
    let listed = before.json()?["manifests"].as_array().map_or(0, Vec::len);
    ensure!(listed == 1, "{listed} referrers before the delete");
    api.delete(&format!("/v2/{repo}/manifests/{digest}"))
        .await?
        .expect(202)?;
    let after = api.get(&path).await?;
    after.expect(200)?;
    let listed = after.json()?["manifests"].as_array().map_or(0, Vec::len);
    ensure!(listed == 0, "{listed} referrers after the delete");
    Ok(())
}

// Deletes are off by default, in distribution and in wharf (`[storage] delete`): DELETE of a
// manifest or a blob answers 405 UNSUPPORTED and deletes nothing; a tag DELETE is refused too
// (400 or 405, §Deleting tags). Cancelling an upload is not a delete and still works.
async fn deletes_are_refused(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("no-deletes");
    let image = api.push_image(&repo, "v1").await?;
    let layer = sha256(&image.layer);
    api.delete(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await?
        .expect_error(405, "UNSUPPORTED")?;
    api.delete(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect_error(405, "UNSUPPORTED")?;
    let tag = api.delete(&format!("/v2/{repo}/manifests/v1")).await?;
    if !matches!(tag.status, 400 | 405) {
        return Err(format!(
            "DELETE of a tag: status {}, want 400 or 405",
            tag.status
        ));
    }
    api.get_manifest(&repo, "v1").await?.expect(200)?;
    api.get_manifest(&repo, &image.digest).await?.expect(200)?;
    api.get(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect(200)?;
    let session = api.start_upload(&repo).await?;
    api.delete(&session.location).await?.expect(204)?;
    Ok(())
}

mod deletes_are_refused_by_default {
    #[tokio::test]
    async fn wharf() {
        if let Some(t) = crate::harness::wharf_without_deletes() {
            crate::harness::expect_pass(t, super::deletes_are_refused(t).await);
        }
    }

    #[tokio::test]
    async fn distribution() {
        if let Some(t) = crate::harness::distribution_without_deletes() {
            crate::harness::expect_pass(t, super::deletes_are_refused(t).await);
        }
    }
}

// A blob a manifest of the repository still references is not deleted (405 DENIED, as zot
// answers): deleting it would break every pull of that manifest. Once the manifest is gone the
// blob can go.
spec!(
    a_referenced_blob_is_not_deleted,
    distribution_differs = "distribution 2.8 unlinks a blob its manifests still reference \
                            (202), and pulls of those manifests then fail"
);
async fn a_referenced_blob_is_not_deleted(t: &Target) -> Result<(), String> {
    let api = Api::new(t)?;
    let repo = repo("referenced-blob");
    let image = api.push_image(&repo, "v1").await?;
    let layer = sha256(&image.layer);
    api.delete(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect_error(405, "DENIED")?;
    api.get(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect(200)?;
    api.delete(&format!("/v2/{repo}/manifests/{}", image.digest))
        .await?
        .expect(202)?;
    api.delete(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect(202)?;
    api.get(&format!("/v2/{repo}/blobs/{layer}"))
        .await?
        .expect(404)?;
    Ok(())
}
