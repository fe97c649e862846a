//! Narrative safety (`txt-1`, `txt-2`): the `div` is well-formed XHTML in the XHTML
//! namespace, uses only the formatting elements R4 allows, and carries no script, no event
//! handler attributes and no `javascript:` URLs.

use quick_xml::events::Event;
use quick_xml::Reader;
use trialbridge_fhir::IssueType;

use crate::walk::Walk;

const XHTML: &[u8] = b"http://www.w3.org/1999/xhtml";

/// HTML 4.0 chapters 7-11 and 15 plus `a` and `img`, as R4 `txt-1` allows.
const ALLOWED: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "b",
    "basefont",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "dir",
    "div",
    "dl",
    "dt",
    "em",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "menu",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
];

/// Checks an xhtml `div`, reporting at the walk's current path.
pub(crate) fn check(walk: &mut Walk, div: &str) {
    if let Err(msg) = scan(div) {
        walk.error(
            IssueType::Value,
            format!("unsafe or malformed narrative (txt-1): {msg}"),
        );
    }
}

fn scan(div: &str) -> Result<(), String> {
    let mut reader = Reader::from_str(div);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.trim_text(false);
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut content = false;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "not well-formed XHTML at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let name = e.local_name();
                let name = std::str::from_utf8(name.as_ref())
                    .unwrap_or("?")
                    .to_string();
                if depth == 0 {
                    if seen_root {
                        return Err("the narrative has more than one root element".into());
                    }
                    seen_root = true;
                    if name != "div" {
                        return Err(format!("the root element is <{name}>, not <div>"));
                    }
                    let ns = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == b"xmlns")
                        .map(|a| a.value.into_owned());
                    if ns.as_deref() != Some(XHTML) {
                        return Err(
                            "the <div> must declare xmlns=\"http://www.w3.org/1999/xhtml\"".into(),
                        );
                    }
                } else if !ALLOWED.contains(&name.as_str()) {
                    return Err(format!("<{name}> is not allowed in a narrative"));
                }
                if name == "img" {
                    content = true;
                }
                for a in e.attributes() {
                    let a = a.map_err(|e| format!("malformed attribute: {e}"))?;
                    let key = String::from_utf8_lossy(a.key.as_ref()).to_ascii_lowercase();
                    if key.starts_with("on") {
                        return Err(format!("event handler attribute '{key}' on <{name}>"));
                    }
                    if matches!(key.as_str(), "href" | "src") {
                        let v = String::from_utf8_lossy(&a.value)
                            .trim()
                            .to_ascii_lowercase();
                        if v.starts_with("javascript:") || v.starts_with("vbscript:") {
                            return Err(format!("script URL in '{key}' on <{name}>"));
                        }
                    }
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err("text outside the <div>".into());
                }
                if t.iter().any(|b| !b.is_ascii_whitespace()) {
                    content = true;
                }
            }
            Event::CData(_) => return Err("CDATA sections are not allowed".into()),
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                return Err(
                    "declarations, processing instructions and DOCTYPEs are not allowed".into(),
                )
            }
            Event::GeneralRef(r) => {
                // XHTML without a DTD defines only XML's five entities; `&reg;` and the other
                // HTML names are undefined (a numeric reference such as `&#174;` is fine).
                let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                if !name.starts_with('#')
                    && !matches!(name.as_str(), "amp" | "lt" | "gt" | "quot" | "apos")
                {
                    return Err(format!(
                        "the entity &{name}; is not defined in XHTML (only &amp; &lt; &gt; &quot; &apos; and numeric references such as &#174;)"
                    ));
                }
                content = true;
            }
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Err("the narrative has no <div> element".into());
    }
    if !content {
        return Err("the narrative has no content (txt-2)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scan;

    #[test]
    fn accepts_ordinary_narratives() {
        assert!(scan("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p><b>id</b>: x &amp; y</p><table><tr><td>1</td></tr></table><img src=\"#a\"/></div>").is_ok());
    }

    #[test]
    fn rejects_unsafe_or_malformed_narratives() {
        for bad in [
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">a</p></div>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:x()\">a</a></div>",
            "<div><p>no namespace</p></div>",
            "<p xmlns=\"http://www.w3.org/1999/xhtml\">a</p>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">   </div>",
            "plain text",
        ] {
            assert!(scan(bad).is_err(), "{bad}");
        }
    }
}
