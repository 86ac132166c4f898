use super::*;
use std::collections::HashSet;

/// The catalogue names of `class` (runtime view, for the checks below).
fn of(class: Class) -> Vec<&'static str> {
    CATALOGUE
        .iter()
        .filter(|e| e.classes.contains(class))
        .map(|e| e.name)
        .collect()
}

#[test]
fn names_are_lower_case_normalized_valid_and_unique() {
    let mut seen = HashSet::new();
    for e in CATALOGUE {
        assert!(
            !e.name.is_empty()
                && e.name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "{} is not lower case with `-`",
            e.name
        );
        assert!(
            e.name.as_bytes()[0].is_ascii_alphanumeric(),
            "{} starts with `-`",
            e.name
        );
        assert_eq!(normalize_header_name(e.name), e.name);
        assert!(
            HeaderName::from_bytes(e.name.as_bytes()).is_ok(),
            "{}",
            e.name
        );
        assert!(seen.insert(e.name), "{} is listed twice", e.name);
        assert!(entry_named(e.name).is_some_and(|f| f == e));
    }
}

#[test]
fn every_entry_has_a_class_and_a_one_line_reason() {
    for e in CATALOGUE {
        assert!(!e.classes.is_empty(), "{} has no class", e.name);
        assert!(
            e.reason.len() >= 10 && !e.reason.contains(['\n', '|']),
            "{}: {:?}",
            e.name,
            e.reason
        );
    }
    for family in of(Class::IdentityFamily) {
        assert!(entry_named(family).is_some_and(|e| !e.reason.is_empty()));
    }
}

#[test]
fn identity_families_are_prefixes_that_cover_no_other_name() {
    let families = of(Class::IdentityFamily);
    assert!(!families.is_empty());
    for (i, family) in families.iter().enumerate() {
        assert!(family.ends_with('-'), "{family}");
        let e = entry_named(family).map(|e| e.classes);
        assert_eq!(e, Some(Classes::of(&[Class::IdentityFamily])), "{family}");
        for (j, other) in families.iter().enumerate() {
            assert!(
                i == j || !family.starts_with(other),
                "{family} is in {other}"
            );
        }
        // A family covers no other catalogue name: an exact identity name would be listed
        // twice, and any other name would be stripped as identity.
        for e in CATALOGUE.iter().filter(|e| e.name != *family) {
            assert!(
                !name_starts_with_normalized(e.name.as_bytes(), family),
                "{} is covered by {family}",
                e.name
            );
        }
    }
    for name in of(Class::Identity) {
        assert!(!name.ends_with('-'), "{name}");
    }
}

#[test]
fn identity_and_forwarded_names_have_no_other_class() {
    for e in CATALOGUE {
        for only in [Class::Identity, Class::IdentityFamily, Class::Forwarded] {
            if e.classes.contains(only) {
                assert_eq!(e.classes, Classes::of(&[only]), "{}", e.name);
            }
        }
    }
    // Nothing else is identity or forwarded in any spelling either.
    for e in CATALOGUE {
        let spelled = e.name.replace('-', "_");
        for raw in [e.name, spelled.as_str()] {
            let c = classes_of(raw.as_bytes());
            for only in [Class::Identity, Class::IdentityFamily, Class::Forwarded] {
                assert!(
                    !c.contains(only) || e.classes == Classes::of(&[only]),
                    "{raw} is {only:?}"
                );
            }
        }
    }
}

#[test]
fn the_ui_allow_list_holds_no_identity_hop_by_hop_or_forwarded_name() {
    for name in of(Class::UiBaseline) {
        let spelled = name.replace('-', "_");
        for raw in [name, spelled.as_str()] {
            let c = classes_of(raw.as_bytes());
            for never in [
                Class::Identity,
                Class::IdentityFamily,
                Class::HopByHop,
                Class::Forwarded,
            ] {
                assert!(!c.contains(never), "{raw} is {never:?} and on the UI list");
            }
        }
        // The one credential Streamlit needs: its XSRF check and `st.login` read cookies.
        assert!(
            !is(name.as_bytes(), Class::Credential) || name == "cookie",
            "{name} is a credential on the UI list"
        );
    }
}

#[test]
fn class_overlaps_are_the_intended_ones() {
    let both = |a: Class, b: Class| -> Vec<&str> {
        CATALOGUE
            .iter()
            .filter(|e| e.classes.contains(a) && e.classes.contains(b))
            .map(|e| e.name)
            .collect()
    };
    assert_eq!(
        both(Class::HopByHop, Class::Credential),
        ["proxy-authorization"]
    );
    assert!(both(Class::HopByHop, Class::Framing).is_empty());
    assert!(both(Class::HopByHop, Class::RequestId).is_empty());
    assert!(both(Class::Credential, Class::RequestId).is_empty());
    assert!(both(Class::Framing, Class::Credential).is_empty());
    assert_eq!(both(Class::UiBaseline, Class::Credential), ["cookie"]);
    assert_eq!(
        both(Class::UiBaseline, Class::Framing),
        ["content-length", "host"]
    );
    assert_eq!(both(Class::UiBaseline, Class::RequestId), [REQUEST_ID]);
}

#[test]
fn const_views_are_the_class_in_catalogue_order() {
    const HOP: [&str; 10] = names(Class::HopByHop);
    const HOP_NAMES: [HeaderName; 10] = header_names(Class::HopByHop);
    assert_eq!(HOP.to_vec(), of(Class::HopByHop));
    for (h, n) in HOP_NAMES.iter().zip(HOP) {
        assert_eq!(h.as_str(), n);
    }
    // Standard names come out as `http`'s own constants.
    for std in [
        http::header::CONNECTION,
        http::header::TE,
        http::header::TRAILER,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::header::PROXY_AUTHENTICATE,
        http::header::PROXY_AUTHORIZATION,
        http::header::EXPECT,
    ] {
        assert!(HOP_NAMES.contains(&std), "{std}");
    }
    for class in Class::ALL {
        assert!(count(class) > 0, "{class:?}");
        assert_eq!(count(class), of(class).len());
    }
    assert_eq!(names::<1>(Class::RequestId), [REQUEST_ID]);
    const FORWARDED_NAMES: [&str; 7] = names(Class::Forwarded);
    assert_eq!(
        FORWARDED_NAMES,
        [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_FORWARDED_PORT,
            X_FORWARDED_PREFIX,
            FORWARDED,
            X_REAL_IP
        ]
    );
}

#[test]
#[should_panic(expected = "another number of names")]
fn a_view_of_the_wrong_size_fails() {
    let _ = names::<3>(Class::HopByHop);
}

#[test]
fn each_class_is_matched_in_its_spelling() {
    // Normalized: any letter case, `_` for `-`.
    assert!(is(b"X_Remote_User", Class::Identity));
    assert!(is(b"CF_ACCESS_JWT_ASSERTION", Class::IdentityFamily));
    assert!(is(b"X_Forwarded_Prefix", Class::Forwarded));
    assert!(is(b"x_request_id", Class::RequestId));
    // Exact: any letter case, `_` is its own character.
    assert!(is(b"Transfer-Encoding", Class::HopByHop));
    assert!(!is(b"transfer_encoding", Class::HopByHop));
    assert!(is(b"AUTHORIZATION", Class::Credential));
    assert!(!is(b"authorization_", Class::Credential));
    assert!(is(b"Sec-CH-UA", Class::UiBaseline));
    assert!(!is(b"sec_ch_ua", Class::UiBaseline));
    // A family's bare prefix (without `-`) and near misses are not identity.
    assert!(!is(b"cf-access", Class::IdentityFamily));
    assert!(!is(b"x-forwarded-users", Class::Identity));
    assert_eq!(classes_of(b"x-unknown"), Classes::EMPTY);
    assert_eq!(
        classes_of(b"X-Request-Id"),
        Classes::of(&[Class::RequestId, Class::UiBaseline])
    );
    assert_eq!(
        classes_of(b"x_request_id"),
        Classes::of(&[Class::RequestId])
    );
    assert_eq!(
        classes_of(b"Proxy-Authorization"),
        Classes::of(&[Class::HopByHop, Class::Credential])
    );
}

#[test]
fn normalized_name_comparison() {
    assert!(name_eq_normalized(b"X_Remote_User", "x-remote-user"));
    assert!(name_eq_normalized(b"X-REMOTE_USER", "x-remote-user"));
    assert!(!name_eq_normalized(b"x-remote-use", "x-remote-user"));
    assert!(!name_eq_normalized(b"x-remote.user", "x-remote-user"));
    assert!(!name_eq_normalized(
        "x-remote-us\u{e9}".as_bytes(),
        "x-remote-user"
    ));
    // `canonical` is taken as already normalized.
    assert!(!name_eq_normalized(b"x-remote-user", "X-Remote-User"));
    assert!(!name_eq_normalized(b"x_remote_user", "x_remote_user"));
    assert!(name_starts_with_normalized(b"cf-access-", "cf-access-"));
    assert!(!name_starts_with_normalized(b"xcf-access-", "cf-access-"));
    assert_eq!(normalize_header_name("  X_Foo-BAR\t"), "x-foo-bar");
}

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/security.md");
const BEGIN: &str = "<!-- header-catalogue:begin (generated from fluxlit_headers::CATALOGUE) -->\n";
const END: &str = "<!-- header-catalogue:end -->";

/// `docs/security.md`'s "Header catalogue" table is [`markdown_table`]. To refresh it after
/// changing the catalogue: `FLUXLIT_BLESS_DOCS=1 cargo test -p fluxlit-headers`.
#[test]
fn the_security_doc_shows_the_catalogue() {
    let doc = std::fs::read_to_string(DOC).expect("docs/security.md");
    assert!(doc.contains("\n## Header catalogue\n"), "heading missing");
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = start + doc[start..].find(END).expect("end marker");
    let want = markdown_table();
    if doc[start..end] != want {
        assert!(
            std::env::var_os("FLUXLIT_BLESS_DOCS").is_some(),
            "docs/security.md's header catalogue is stale: run \
             `FLUXLIT_BLESS_DOCS=1 cargo test -p fluxlit-headers`"
        );
        let fresh = format!("{}{want}{}", &doc[..start], &doc[end..]);
        std::fs::write(DOC, fresh).expect("write docs/security.md");
    }
    for e in CATALOGUE {
        assert!(want.contains(&format!("| `{}", e.name)), "{}", e.name);
    }
}
