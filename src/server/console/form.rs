//! Reading what a browser sends: `application/x-www-form-urlencoded` bodies and query
//! strings (through the `form_urlencoded` crate), and the session cookie.

use std::collections::HashMap;

/// The fields of a urlencoded body or query string; a repeated name keeps its last value.
pub fn fields(text: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(text).into_owned().collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let f = fields(b"secret=a%2Bb%3D&tags=tag%3Adev+tag%3Aops&x=1&x=2");
        assert_eq!(f["secret"], "a+b=");
        assert_eq!(f["tags"], "tag:dev tag:ops");
        assert_eq!(f["x"], "2");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = Some("a=1; wgmesh_console=xyz; wgmesh_console_old=no");
        assert_eq!(cookie(h, "wgmesh_console"), Some("xyz"));
        assert_eq!(cookie(h, "b"), None);
        assert_eq!(cookie(None, "a"), None);
    }
}
