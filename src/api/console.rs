//! The operator console's files, served under `/console/` on the AWS door's listener
//! (`[console]`, `docs/console.md`).
//!
//! The console is a static browser app: every action it takes is a SigV4-signed request to
//! the AWS door made with the signed-in user's own credentials, so this module serves files
//! and nothing else. It reads the built console into memory once, at start (no file is
//! opened per request, and no path from a request ever reaches the file system: a request
//! names a file by looking it up in that map), and answers with headers that keep the page
//! to itself:
//!
//! - a strict `Content-Security-Policy` ([`CONTENT_SECURITY_POLICY`]): scripts, styles and
//!   connections from this origin only, no framing, no inline code;
//! - `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
//!   `Cross-Origin-Opener-Policy` and `Cross-Origin-Resource-Policy: same-origin`;
//! - `index.html` never cached; Vite's content-hashed files under `assets/` cached for good.
//!
//! Cross-origin requests to the AWS door itself are refused by the door ([`own_origin`],
//! [`is_foreign_origin`]): CORS is allowed for the console's own origin only.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::console::CONSOLE_INDEX;

/// The URL path the console is served under.
pub const CONSOLE_PATH: &str = "/console/";

/// The console's Content-Security-Policy: nothing from another origin, nothing inline.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Most files a console directory may hold, and their total size: a built console is a few
/// files of a few hundred KB; anything far larger is the wrong directory.
const MAX_FILES: usize = 512;
const MAX_TOTAL_BYTES: u64 = 32 * 1024 * 1024;

/// One file of the console, ready to send.
#[derive(Debug, Clone)]
struct Asset {
    body: Bytes,
    content_type: &'static str,
    /// Named by its content hash (Vite's `assets/`): cacheable for good.
    immutable: bool,
}

/// The built console, read once: URL path (under [`CONSOLE_PATH`]) to file.
#[derive(Debug, Clone, Default)]
pub struct ConsoleAssets {
    files: HashMap<String, Asset>,
}

impl ConsoleAssets {
    /// Reads every file under `dir` (which must hold `index.html`), refusing a directory
    /// with more than [`MAX_FILES`] files or [`MAX_TOTAL_BYTES`] bytes, and symbolic links.
    pub fn load(dir: &Path) -> io::Result<ConsoleAssets> {
        let mut assets = ConsoleAssets::default();
        let mut total = 0u64;
        assets.read_dir(dir, "", &mut total)?;
        if !assets.files.contains_key(CONSOLE_INDEX) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no {CONSOLE_INDEX}", dir.display()),
            ));
        }
        Ok(assets)
    }

    fn read_dir(&mut self, dir: &Path, prefix: &str, total: &mut u64) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            let rel = format!("{prefix}{name}");
            if kind.is_dir() {
                self.read_dir(&entry.path(), &format!("{rel}/"), total)?;
            } else if kind.is_file() {
                *total += entry.metadata()?.len();
                if self.files.len() >= MAX_FILES || *total > MAX_TOTAL_BYTES {
                    return Err(io::Error::other(format!(
                        "{} holds more than {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes: not a built console",
                        dir.display()
                    )));
                }
                let body = Bytes::from(std::fs::read(entry.path())?);
                let asset = Asset {
                    body,
                    content_type: content_type(&name),
                    immutable: rel.starts_with("assets/"),
                };
                self.files.insert(rel, asset);
            }
        }
        Ok(())
    }

    /// How many files were read.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file was read.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The answer to a request whose path [`is_console_path`]: the file, a redirect from
    /// `/console` to `/console/`, 404 for a file the console does not have, 405 for a method
    /// other than GET and HEAD.
    pub fn serve(&self, parts: &Parts) -> Response {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "The console is read with GET.",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let path = parts.uri.path();
        let Some(rel) = path.strip_prefix(CONSOLE_PATH) else {
            return redirect_to_console();
        };
        let rel = if rel.is_empty() { CONSOLE_INDEX } else { rel };
        match self.files.get(rel) {
            Some(asset) => asset_response(asset, parts.method == Method::HEAD),
            None => plain(StatusCode::NOT_FOUND, "The console has no such file."),
        }
    }
}

/// Whether a request path is the console's (`/console` or under `/console/`).
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with(CONSOLE_PATH)
}

/// The origin a browser shows for pages of this listener: `https://` (or `http://` on a
/// plain loopback listener) and the `Host` the request was sent to.
pub fn own_origin(parts: &Parts, secure: bool) -> Option<String> {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| header_text(&parts.headers, header::HOST).map(str::to_string))?;
    let scheme = if secure { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// Whether a request carries an `Origin` other than this listener's own: a page of another
/// site calling the door from a browser. Clients other than browsers send no `Origin`.
pub fn is_foreign_origin(parts: &Parts, secure: bool) -> bool {
    match header_text(&parts.headers, header::ORIGIN) {
        None => false,
        Some(origin) => own_origin(parts, secure)
            .is_none_or(|own| !origin.trim_end_matches('/').eq_ignore_ascii_case(&own)),
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The content type of a console file, by its extension.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn asset_response(asset: &Asset, head: bool) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(asset.body.clone())
    };
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-store"
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    with_page_headers(r)
}

fn redirect_to_console() -> Response {
    let mut r = plain(
        StatusCode::PERMANENT_REDIRECT,
        "The console is at /console/.",
    );
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(CONSOLE_PATH));
    r
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    let mut r = Response::new(Body::from(message));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_page_headers(r)
}

/// The headers every console response carries.
fn with_page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn console_dir() -> (tempfile::TempDir, ConsoleAssets) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").expect("write");
        std::fs::create_dir(dir.path().join("assets")).expect("mkdir");
        std::fs::write(dir.path().join("assets/app-1a2b.js"), "let a=1").expect("write");
        let assets = ConsoleAssets::load(dir.path()).expect("load");
        (dir, assets)
    }

    #[test]
    fn files_are_served_with_the_page_headers() {
        let (_dir, assets) = console_dir();
        assert_eq!(assets.len(), 2);
        let index = assets.serve(&parts(Method::GET, "/console/", &[]));
        assert_eq!(index.status(), StatusCode::OK);
        let h = index.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert_eq!(h["cache-control"], "no-store");
        let js = assets.serve(&parts(Method::GET, "/console/assets/app-1a2b.js", &[]));
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable"));
        assert_eq!(js.headers()["x-content-type-options"], "nosniff");
    }

    #[test]
    fn only_the_console_files_are_reachable() {
        let (_dir, assets) = console_dir();
        for path in [
            "/console/../Cargo.toml",
            "/console/%2e%2e/etc/passwd",
            "/console/nope.js",
            "/console//index.html",
        ] {
            let r = assets.serve(&parts(Method::GET, path, &[]));
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let r = assets.serve(&parts(Method::GET, "/console", &[]));
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()["location"], "/console/");
        let r = assets.serve(&parts(Method::POST, "/console/", &[]));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn a_directory_without_a_console_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("other.html"), "x").expect("write");
        assert!(ConsoleAssets::load(dir.path()).is_err());
        assert!(ConsoleAssets::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_foreign_origin_is_told_apart_from_the_console_s_own() {
        let own = [
            ("host", "kms.example:4443"),
            ("origin", "https://kms.example:4443"),
        ];
        assert!(!is_foreign_origin(&parts(Method::POST, "/", &own), true));
        assert!(is_foreign_origin(&parts(Method::POST, "/", &own), false));
        let evil = [
            ("host", "kms.example:4443"),
            ("origin", "https://evil.example"),
        ];
        assert!(is_foreign_origin(&parts(Method::POST, "/", &evil), true));
        let none = [("host", "kms.example:4443")];
        assert!(!is_foreign_origin(&parts(Method::POST, "/", &none), true));
        assert!(is_foreign_origin(
            &parts(Method::POST, "/", &[("origin", "null")]),
            true
        ));
    }
}
