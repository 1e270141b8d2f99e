//! The `Content-Security-Policy` of the page: only its own inline style and script may run.
//!
//! Hashes rather than a nonce: [`STYLE`] and [`SCRIPT`] are constants of the binary, so their
//! SHA-256 hashes are fixed. A nonce would need a fresh unguessable value per response (a CSPRNG
//! on every page load) for no gain: the refresh script only moves the new page's `<main>` in and
//! never adds a script, and hashes also keep the page byte-for-byte reproducible, which the
//! tests rely on. The hashes are pinned here and checked by a test that computes them (with
//! `sha2`, a dev-dependency): no hashing code in the build users ship.

#[cfg(test)]
use super::{SCRIPT, STYLE};

/// The SHA-256 of [`STYLE`] (`page.css`), base64: what `style-src` allows.
const STYLE_SHA256: &str = "BC5O9gc46XYhevFiEBHc0S0cbl7l9wup5saUb3rFeF8=";

/// The SHA-256 of [`SCRIPT`] (`page.js`), base64: what `script-src` allows.
const SCRIPT_SHA256: &str = "wwUyYETdA68ETvaTG6nd20NfrBnvOUDHdnOVK3CfWLU=";

/// The policy of the HTML page. `default-src 'none'` forbids everything else: no other script
/// or style (an injected `<script>` or `style=""` would not run even if escaping failed), no
/// image, font, frame or form; `connect-src 'self'` lets the refresh control fetch the page
/// again; `frame-ancestors 'none'` keeps the page out of other sites' frames.
pub(crate) fn page_policy() -> &'static str {
    static POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "default-src 'none'; style-src 'sha256-{STYLE_SHA256}'; \
             script-src 'sha256-{SCRIPT_SHA256}'; connect-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
        )
    });
    &POLICY
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// The SHA-256 of `text`, in standard base64 with padding: the form CSP hash sources take.
    fn sha256_base64(text: &str) -> String {
        base64(&Sha256::digest(text.as_bytes()))
    }

    /// Standard base64 (RFC 4648 §4) with `=` padding.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// The pinned hashes are the style's and the script's: a change to `page.css` or `page.js`
    /// fails here (with the new hash to pin) rather than in a browser that refuses the page.
    #[test]
    fn the_pinned_hashes_are_the_page_assets() {
        assert_eq!(
            STYLE_SHA256,
            sha256_base64(STYLE),
            "pin page.css's new hash"
        );
        assert_eq!(
            SCRIPT_SHA256,
            sha256_base64(SCRIPT),
            "pin page.js's new hash"
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        // SHA-256 of "abc" (FIPS 180-2), as `openssl dgst -sha256 -binary | base64` prints it.
        assert_eq!(
            sha256_base64("abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_page_own_style_and_script() {
        let policy = page_policy();
        let page = crate::Detector::builder()
            .build()
            .unwrap()
            .report()
            .to_html();
        // The hashes are of the exact text between the tags, as the browser computes them.
        let inline = |open: &str, close: &str| {
            let start = page.find(open).unwrap() + open.len();
            let end = start + page[start..].find(close).unwrap();
            sha256_base64(&page[start..end])
        };
        assert!(policy.contains(&format!(
            "style-src 'sha256-{}';",
            inline("<style>", "</style>")
        )));
        assert!(policy.contains(&format!(
            "script-src 'sha256-{}';",
            inline("<script>", "</script>")
        )));
        assert!(policy.starts_with("default-src 'none';"));
        assert!(!policy.contains("unsafe"));
        assert_eq!(page.matches("<style").count(), 1);
        assert_eq!(page.matches("<script").count(), 1);
        assert!(
            !page.contains(" style="),
            "an inline style attribute would be blocked"
        );
        // Neither file can close its own element early.
        assert!(!STYLE.contains("</"));
        assert!(!SCRIPT.contains("</"));
    }
}
