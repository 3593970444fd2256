//! The live console's files (`public/console/`), built into the Worker and
//! served at `/console/`. They are embedded rather than served by wrangler's
//! `[assets]`: with an assets directory configured, `wrangler dev` answers
//! its scheduled-event trigger (`/cdn-cgi/handler/scheduled`) with an
//! exception, and that trigger is how roll-ups and the lifecycle run as of a
//! chosen time.

/// A file of the console: its content type and text.
pub type Asset = (&'static str, &'static str);

const HTML: &str = "text/html; charset=utf-8";

/// The page at `/`: where a person finds the console and the documents.
pub const HOME: &str = include_str!("../../public/index.html");

/// The console file at `path`, if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/console/" | "/console/index.html" => {
            Some((HTML, include_str!("../../public/console/index.html")))
        }
        "/console/console.js" => Some((
            "text/javascript; charset=utf-8",
            include_str!("../../public/console/console.js"),
        )),
        "/console/console.css" => Some((
            "text/css; charset=utf-8",
            include_str!("../../public/console/console.css"),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_what_it_loads_are_served() {
        let (ct, page) = asset("/console/").unwrap();
        assert_eq!(ct, HTML);
        assert!(page.contains("console.js") && page.contains("console.css"));
        assert!(asset("/console/console.js").is_some());
        assert!(asset("/console/console.css").is_some());
        assert!(asset("/console/../src/lib.rs").is_none());
        assert!(asset("/console/missing.js").is_none());
    }
}
