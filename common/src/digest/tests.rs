use super::*;

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn hashes_and_round_trips() {
    let d = Digest::sha256(b"");
    assert_eq!(d.as_str(), EMPTY);
    assert_eq!(d.algorithm(), Algorithm::Sha256);
    assert_eq!(d.hex().len(), 64);
    assert_eq!(d.short(), "e3b0c44298fc");
    assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
    assert!(d.matches(b""));
    assert!(!d.matches(b"x"));
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
}

#[test]
fn sha512_is_supported() {
    let d = Digest::of(Algorithm::Sha512, b"abc");
    assert!(d.as_str().starts_with("sha512:"));
    assert_eq!(d.hex().len(), 128);
    assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
}

#[test]
fn rejects_bad_digests_with_the_text() {
    let cases = [
        ("", "expected <algorithm>:<hex>"),
        ("sha256", "expected <algorithm>:<hex>"),
        ("sha256:abc", "needs 64 lowercase hex"),
        (
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "needs 64 lowercase hex",
        ),
        (
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "unsupported digest algorithm",
        ),
        ("Sha256:abcd", "expected <algorithm>:<hex>"),
        (":abcd", "expected <algorithm>:<hex>"),
    ];
    for (input, want) in cases {
        let err = input.parse::<Digest>().unwrap_err().to_string();
        assert!(err.contains(want), "{input:?}: {err}");
        if !input.is_empty() {
            assert!(err.contains(input), "{input:?} not named in {err}");
        }
    }
    assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
}

#[test]
fn hashing_writer_counts_and_hashes() {
    let mut w = HashingWriter::new(Vec::new(), Algorithm::Sha256);
    std::io::Write::write_all(&mut w, b"hello").unwrap();
    let (d, n, inner) = w.finish();
    assert_eq!(n, 5);
    assert_eq!(inner, b"hello");
    assert_eq!(d, Digest::sha256(b"hello"));
}
