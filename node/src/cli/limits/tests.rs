//! The envoyproxy/ratelimit file reader over many spellings: what loads,
//! what it loads as, and where each refusal says the problem is.

use super::*;

/// The one domain in `text`, or the test fails with the reader's error.
fn one(text: &str) -> RateLimitDomain {
    match read("t.yaml", text) {
        Ok(mut all) if all.len() == 1 => all.remove(0).domain,
        Ok(all) => panic!("{} domains in {text:?}", all.len()),
        Err(e) => panic!("{text:?}: {e}"),
    }
}

/// The reader's refusal of `text`.
fn refused(text: &str) -> FileError {
    match read("t.yaml", text) {
        Ok(all) => panic!("{text:?} was read: {:?}", all.iter().map(|d| &d.domain).collect::<Vec<_>>()),
        Err(e) => e,
    }
}

/// `text` is refused at `line` and `column`, naming `field`, with a
/// message containing `says`.
fn assert_refused(text: &str, line: usize, column: usize, field: &str, says: &str) {
    let e = refused(text);
    assert_eq!((e.line, e.column, e.field.as_str()), (line, column, field), "{text:?}: {e}");
    assert!(e.message.contains(says), "{text:?}: {e:?} should say {says:?}");
    assert!(e.to_string().starts_with(&format!("t.yaml: line {line}, column {column}: ")), "{e}");
}

#[test]
fn scalars_yaml_reads_as_numbers_or_booleans_are_taken_as_their_text() {
    // (as written, as read)
    let table = [
        ("123", "123"),
        ("-5", "-5"),
        ("1.10", "1.10"),
        ("0x1F", "0x1F"),
        ("1e3", "1e3"),
        ("007", "007"),
        (".inf", ".inf"),
        ("true", "true"),
        ("False", "False"),
        ("yes", "yes"),
        ("'123'", "123"),
        ("\"a: b\"", "a: b"),
        ("/api/*", "/api/*"),
        ("192.0.2.1", "192.0.2.1"),
        ("2026-12-01", "2026-12-01"),
    ];
    for (written, read) in table {
        let d = one(&format!(
            "domain: {written}\ndescriptors:\n  - key: {written}\n    value: {written}\n    rate_limit:\n      \
             name: {written}\n      unit: second\n"
        ));
        assert_eq!(d.domain, read, "domain: {written}");
        assert_eq!(d.descriptors[0].key, read, "key: {written}");
        assert_eq!(d.descriptors[0].value.as_deref(), Some(read), "value: {written}");
        let name = d.descriptors[0].rate_limit.as_ref().and_then(|l| l.name.as_deref());
        assert_eq!(name, Some(read), "name: {written}");
    }
}

#[test]
fn a_value_left_out_null_or_empty_matches_any_value() {
    for value in ["", "\n    value:", "\n    value: ~", "\n    value: null", "\n    value: ''"] {
        let d = one(&format!("domain: d\ndescriptors:\n  - key: k{value}\n"));
        assert_eq!(d.descriptors[0].value, None, "{value:?}");
    }
}

#[test]
fn units_are_read_in_any_case() {
    let table = [
        ("second", RateLimitUnit::Second),
        ("SECOND", RateLimitUnit::Second),
        ("Second", RateLimitUnit::Second),
        ("sEcOnD", RateLimitUnit::Second),
        ("minute", RateLimitUnit::Minute),
        ("MINUTE", RateLimitUnit::Minute),
        ("hour", RateLimitUnit::Hour),
        ("HOUR", RateLimitUnit::Hour),
        ("day", RateLimitUnit::Day),
        ("Day", RateLimitUnit::Day),
        ("week", RateLimitUnit::Week),
        ("month", RateLimitUnit::Month),
        ("YEAR", RateLimitUnit::Year),
        ("'hour'", RateLimitUnit::Hour),
    ];
    for (written, unit) in table {
        let d = one(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: {written}\n      requests_per_unit: 7\n"
        ));
        let limit = d.descriptors[0].rate_limit.clone().unwrap_or_else(|| panic!("{written}: no limit"));
        assert_eq!((limit.unit, limit.requests_per_unit), (Some(unit), 7), "unit: {written}");
    }
}

#[test]
fn flags_take_the_spellings_the_go_loader_reads() {
    let table = [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("yes", true),
        ("Yes", true),
        ("YES", true),
        ("y", true),
        ("Y", true),
        ("on", true),
        ("ON", true),
        ("false", false),
        ("no", false),
        ("No", false),
        ("n", false),
        ("off", false),
        ("OFF", false),
        ("", false),
        ("~", false),
    ];
    for (written, flag) in table {
        let d = one(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    value: v*\n    shadow_mode: {written}\n    quota_mode: \
             {written}\n    share_threshold: {written}\n    detailed_metric: {written}\n    value_to_metric: {written}\n"
        ));
        let r = &d.descriptors[0];
        assert_eq!(
            [r.shadow_mode, r.quota_mode, r.share_threshold, r.detailed_metric, r.value_to_metric],
            [flag; 5],
            "{written:?}"
        );
        let d = one(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: {written}\n      {}\n",
            if flag { "" } else { "unit: day" }
        ));
        assert_eq!(d.descriptors[0].rate_limit.as_ref().map(|l| l.unlimited), Some(flag), "unlimited: {written:?}");
    }
}

#[test]
fn requests_per_unit_is_a_whole_number_from_zero_to_u32_max() {
    let limit = |written: &str| {
        format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: {written}\n")
    };
    for (written, n) in [("0", 0), ("5", 5), ("4294967295", u32::MAX), ("0x10", 16), ("100.0", 100), ("", 0), ("~", 0)]
    {
        let d = one(&limit(written));
        assert_eq!(d.descriptors[0].rate_limit.as_ref().map(|l| l.requests_per_unit), Some(n), "{written:?}");
    }
    for written in ["-1", "4294967296", "1.5", "'5'", "five", "[5]", "{n: 5}", "true"] {
        assert_refused(&limit(written), 6, 26, "descriptors[0].rate_limit.requests_per_unit", "");
    }
}

#[test]
fn an_unknown_field_is_refused_at_its_line_and_column_at_every_level() {
    // (text, line, column, the unknown field's path, message)
    let table = [
        ("domain: d\ndomian: e\n", 2, 1, "domian", "unknown field `domian`"),
        ("# a comment\n\ndomain: d\n\nDescriptors: []\n", 5, 1, "Descriptors", "unknown field `Descriptors`"),
        ("domain: d\ndescriptors:\n  - key: k\n    vaule: v\n", 4, 5, "descriptors[0].vaule", "unknown field `vaule`"),
        (
            "domain: d\ndescriptors:\n  - key: a\n  - key: b\n    ratelimit:\n      unit: second\n",
            5,
            5,
            "descriptors[1].ratelimit",
            "unknown field `ratelimit`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      reqests_per_unit: 5\n",
            6,
            7,
            "descriptors[0].rate_limit.reqests_per_unit",
            "unknown field `reqests_per_unit`, expected one of `requests_per_unit`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      replaces:\n        - name: a\n          \
             nmae: b\n",
            8,
            11,
            "descriptors[0].rate_limit.replaces[0].nmae",
            "unknown field `nmae`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        descriptors:\n          - key: \
             c\n            shadowmode: true\n",
            8,
            13,
            "descriptors[0].descriptors[0].descriptors[0].shadowmode",
            "unknown field `shadowmode`",
        ),
        (
            "domain: d\ndescriptors: [{key: a, rate_limit: {unit: second, requests: 1}}]\n",
            2,
            51,
            "descriptors[0].rate_limit.requests",
            "unknown field `requests`",
        ),
        // Known fields at the wrong level say where they belong.
        ("domain: d\nunit: second\n", 2, 1, "unit", "(`unit` belongs in a rate_limit)"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    requests_per_unit: 5\n",
            4,
            5,
            "descriptors[0].requests_per_unit",
            "(`requests_per_unit` belongs in a rate_limit)",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      shadow_mode: true\n",
            6,
            7,
            "descriptors[0].rate_limit.shadow_mode",
            "(`shadow_mode` belongs in a descriptor)",
        ),
        ("domain: d\ndescriptors:\n  - domain: e\n    key: k\n", 3, 5, "descriptors[0].domain", "belongs at the top"),
        // metadata: envoyproxy/ratelimit's, not Tollgate's.
        (
            "domain: d\ndescriptors:\n  - key: k\n    metadata:\n      team: search\n",
            4,
            5,
            "descriptors[0].metadata",
            "metadata is not supported by Tollgate",
        ),
        ("domain: d\nmetadata: {a: 1}\n", 2, 1, "metadata", "metadata is not supported by Tollgate"),
        // YAML merge keys: refused with what to write instead.
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: &l {unit: day}\n  - key: b\n    rate_limit:\n      <<: *l\n",
            7,
            7,
            "descriptors[1].rate_limit.<<",
            "merge keys (`<<: *anchor`) are not supported",
        ),
    ];
    for (text, line, column, field, says) in table {
        assert_refused(text, line, column, field, says);
    }
}

#[test]
fn wrong_types_name_the_field_and_its_line() {
    let table = [
        ("domain: [a]\n", 1, 9, "domain", "expected a string"),
        ("domain: {a: b}\n", 1, 9, "domain", "expected a string"),
        ("descriptors: []\n", 1, 1, "", "missing field `domain`"),
        ("- domain: d\n", 1, 1, "", "expected a mapping with `domain` and `descriptors`"),
        ("domain: d\ndescriptors:\n  key: k\n", 3, 3, "descriptors", "expected a sequence"),
        ("domain: d\ndescriptors: key\n", 2, 14, "descriptors", "expected a sequence"),
        ("domain: d\ndescriptors:\n  - k\n", 3, 5, "descriptors[0]", "expected a descriptor: a mapping with `key`"),
        ("domain: d\ndescriptors:\n  - value: v\n", 3, 5, "descriptors[0]", "missing field `key`"),
        ("domain: d\ndescriptors:\n  - key: [a, b]\n", 3, 10, "descriptors[0].key", "expected a string"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: 5\n",
            4,
            17,
            "descriptors[0].rate_limit",
            "expected a rate_limit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n",
            4,
            18,
            "descriptors[0].shadow_mode",
            "true or false",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    quota_mode: 1\n",
            4,
            17,
            "descriptors[0].quota_mode",
            "true or false",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      replaces: {name: a}\n",
            6,
            17,
            "descriptors[0].rate_limit.replaces",
            "expected a sequence",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      replaces: [a]\n",
            6,
            18,
            "descriptors[0].rate_limit.replaces[0]",
            "expected a replaces entry: a mapping `name: LIMIT_NAME`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: [second]\n",
            5,
            13,
            "descriptors[0].rate_limit.unit",
            "expected a string",
        ),
    ];
    for (text, line, column, field, says) in table {
        assert_refused(text, line, column, field, says);
    }
}

#[test]
fn field_rules_broken_name_the_line_of_the_value_they_are_about() {
    let table = [
        // An unknown unit, at the unit.
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n",
            5,
            13,
            "descriptors[0].rate_limit.unit",
            "unknown unit \"fortnight\"",
        ),
        // A unit with unlimited, at the unit.
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n",
            6,
            13,
            "descriptors[0].rate_limit.unit",
            "an unlimited limit takes no unit",
        ),
        // No unit: at the rate_limit block it is missing from.
        (
            "domain: d\ndescriptors:\n  - key: a\n  - key: k\n    rate_limit:\n      requests_per_unit: 5\n",
            6,
            7,
            "descriptors[1].rate_limit.unit",
            "required",
        ),
        // An empty unit is no unit.
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: '', requests_per_unit: 5}\n",
            4,
            24,
            "descriptors[0].rate_limit.unit",
            "required",
        ),
        // Two rules of one level with the same key and value: at the second.
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: x\n  - key: k\n    value: v\n",
            6,
            5,
            "descriptors[2]",
            "a second descriptor",
        ),
        // share_threshold without a pattern.
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
            5,
            22,
            "descriptors[0].share_threshold",
            "pattern",
        ),
        // A limit replacing itself.
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      name: n\n      replaces:\n        - \
             name: n\n",
            8,
            17,
            "descriptors[0].rate_limit.replaces[0].name",
            "cannot replace itself",
        ),
        // Empty key and domain.
        ("domain: d\ndescriptors:\n  - key: ''\n", 3, 10, "descriptors[0].key", "a key must be"),
        ("domain: ''\n", 1, 9, "domain", "a domain must be"),
        // A control character (YAML's escapes can write one).
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: \"a\\tb\"\n",
            4,
            12,
            "descriptors[0].value",
            "control characters",
        ),
    ];
    for (text, line, column, field, says) in table {
        assert_refused(text, line, column, field, says);
    }
}

#[test]
fn descriptors_nest_at_most_sixteen_deep() {
    let nested = |depth: usize| {
        let mut text = String::from("domain: d\ndescriptors:\n");
        for level in 0..depth {
            let indent = "  ".repeat(2 * level);
            text.push_str(&format!("{indent}  - key: k{level}\n"));
            if level + 1 < depth {
                text.push_str(&format!("{indent}    descriptors:\n"));
            }
        }
        text
    };
    assert_eq!(one(&nested(16)).descriptors.len(), 1);
    let e = refused(&nested(17));
    assert!(e.field.ends_with(".descriptors") && e.message.contains("16 deep"), "{e}");
    assert_eq!((e.line, e.column), (3 + 2 * 16, 3 + 4 * 16), "at the 17th level's list: {e}");
}

#[test]
fn a_file_may_hold_one_domain_per_document() {
    let text = "# first\ndomain: a\ndescriptors:\n  - key: k\n---\n# nothing but a comment\n---\ndomain: b\n...\n---\n\
                domain: c\ndescriptors:\n  - key: x\n    rate_limit: {unit: minute, requests_per_unit: 3}\n";
    let all = read("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = all.iter().map(|d| d.domain.domain.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(all[2].source.origin(), "t.yaml: line 11");
    // An error in a later document names the file's line, not the document's.
    let text =
        "domain: a\n---\ndomain: b\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      oops: 1\n";
    assert_refused(text, 8, 7, "descriptors[0].rate_limit.oops", "unknown field `oops`");
    let text = "domain: a\n---\ndomain: b\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      unlimited: true\n";
    assert_refused(text, 7, 13, "descriptors[0].rate_limit.unit", "unlimited");
}

#[test]
fn a_file_without_a_domain_is_refused() {
    for text in ["", "# only a comment\n", "---\n", "---\n...\n---\n"] {
        let e = refused(text);
        assert_eq!(e.field, "domain", "{text:?}: {e}");
        assert!(e.message.contains("no domain"), "{text:?}: {e}");
    }
}

#[test]
fn bad_yaml_is_refused_where_the_reader_stopped() {
    let table = [
        ("domain: d\ndescriptors:\n\t- key: k\n", 3),
        ("domain: d\ndescriptors:\n  - key: k\n\t  value: v\n", 4),
        ("domain: d\ndescriptors: [{key: a}\n", 3),
        ("domain: d\n  - key: k\n", 2),
        ("domain: 'd\n", 2),
        ("domain: d\ndomain: e\n", 2),
        ("domain: *nowhere\n", 1),
    ];
    for (text, line) in table {
        let e = refused(text);
        assert_eq!(e.line, line, "{text:?}: {e}");
        if text.lines().nth(line - 1).is_some_and(|l| l.starts_with('\t')) {
            assert!(e.message.contains("YAML indents with spaces"), "{e}");
        }
        assert!(!e.message.is_empty() && !e.message.contains(&format!("at line {line} column {}", e.column)), "{e}");
    }
}

#[test]
fn anchors_and_aliases_are_followed() {
    let d = one("domain: d\ndescriptors:\n  - key: a\n    rate_limit: &hourly {unit: hour, requests_per_unit: 9}\n  \
                 - key: b\n    rate_limit: *hourly\n");
    assert_eq!(d.descriptors[0].rate_limit, d.descriptors[1].rate_limit);
}

#[test]
fn the_example_configuration_loads_with_every_feature_it_shows() {
    let text = include_str!("../../../../deploy/ratelimit/example.yaml");
    let d = one(text);
    assert_eq!(d.domain, "storefront");
    let all: Vec<&DescriptorRule> = {
        fn walk<'a>(rules: &'a [DescriptorRule], out: &mut Vec<&'a DescriptorRule>) {
            for r in rules {
                out.push(r);
                walk(&r.descriptors, out);
            }
        }
        let mut out = Vec::new();
        walk(&d.descriptors, &mut out);
        out
    };
    let limit = |r: &&DescriptorRule| r.rate_limit.clone();
    assert!(all.iter().any(|r| !r.descriptors.is_empty()), "nested descriptors");
    assert!(all.iter().any(|r| r.value.as_deref().is_some_and(|v| v.contains('*'))), "a value pattern");
    assert!(all.iter().any(|r| r.share_threshold), "a shared pattern count");
    assert!(all.iter().any(|r| r.shadow_mode), "shadow mode");
    assert!(all.iter().filter_map(limit).any(|l| l.unlimited), "unlimited");
    assert!(all.iter().filter_map(limit).any(|l| !l.replaces.is_empty()), "replaces");
    assert!(all.iter().filter_map(limit).any(|l| l.unit == Some(RateLimitUnit::Hour)), "an hourly limit");
}

#[test]
fn locate_finds_a_value_or_the_block_a_missing_field_belongs_in() {
    let text = "domain: d\ndescriptors:\n  - key: a\n  - key: b\n    rate_limit:\n      unit: second\n    descriptors:\n      \
                - key: c\n---\ndomain: e\n";
    let table = [
        ("domain", Some((1, 9))),
        ("", Some((1, 1))),
        ("descriptors", Some((3, 3))),
        ("descriptors[1]", Some((4, 5))),
        ("descriptors[1].key", Some((4, 10))),
        ("descriptors[1].rate_limit.unit", Some((6, 13))),
        ("descriptors[1].rate_limit.name", Some((6, 7))),
        ("descriptors[1].descriptors[0].key", Some((8, 14))),
        ("descriptors[7].key", Some((3, 3))),
        ("descriptors[x]", None),
    ];
    for (path, at) in table {
        assert_eq!(locate(text, 0, path), at, "{path}");
    }
    assert_eq!(locate(text, 1, "domain"), Some((10, 9)));
    assert_eq!(locate(text, 2, "domain"), None, "no third document");
}

#[test]
fn a_domain_named_twice_across_files_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "domain: one\n---\ndomain: two\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&b, "# two again\ndomain: two\n").unwrap_or_else(|e| panic!("{e}"));
    let files = [a.display().to_string(), b.display().to_string()];
    let e = read_files(&files).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.starts_with(&format!("{}: line 2, column 9: domain: ", files[1]))
            && e.contains(&format!("also in {}: line 3", files[0])),
        "{e}"
    );
    std::fs::write(&b, "domain: three\n").unwrap_or_else(|e| panic!("{e}"));
    let all = read_files(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.iter().map(|d| d.domain.domain.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
    // Not UTF-8: the line and column of the first bad byte.
    std::fs::write(&b, b"domain: d\ndescriptors:\n  - key: \xff\n").unwrap_or_else(|e| panic!("{e}"));
    let e = read_files(&files).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(e, format!("{}: line 3, column 10: not UTF-8 text", files[1]));
}
