use super::*;

fn all() -> Redactor {
    Redactor::builtins_only()
}

fn with_secrets(secrets: &[&str]) -> Redactor {
    let names: Vec<String> = builtin_names().map(String::from).collect();
    Redactor::new(
        secrets.iter().map(|s| s.to_string()),
        &names,
        &[],
        Vec::new(),
    )
    .expect("rules")
}

/// Each case: input, what must be gone, what the output must contain.
fn masks(r: &Redactor, input: &str, gone: &str, shown: &str) {
    let out = r.text(input);
    assert!(!out.contains(gone), "{gone:?} survived in {out:?}");
    assert!(out.contains(shown), "{shown:?} missing from {out:?}");
}

fn keeps(r: &Redactor, input: &str) {
    assert_eq!(r.text(input), input, "{input:?} must pass unchanged");
}

#[test]
fn api_keys_positive_and_negative() {
    let r = all();
    masks(
        &r,
        "key=sk-proj-AbCdEf0123456789xyz end",
        "sk-proj-AbCdEf0123456789xyz",
        "key=[REDACTED:api_key] end",
    );
    masks(
        &r,
        r#"{"k":"sk-ant-api03-abcdefghijklmnop_qr"}"#,
        "abcdefghijklmnop",
        r#"{"k":"[REDACTED:api_key]"}"#,
    );
    masks(
        &r,
        "AKIAIOSFODNN7EXAMPLE",
        "AKIAIOSFODNN7EXAMPLE",
        "[REDACTED:api_key]",
    );
    masks(
        &r,
        "ASIAIOSFODNN7EXAMPLE!",
        "IOSFODNN7",
        "[REDACTED:api_key]!",
    );
    keeps(&r, "sk-short");
    keeps(&r, "task-abcdefghijklmnopqrstuvwxyz"); // `sk-` inside a word
    keeps(&r, "AKIAiosfodnn7example"); // lowercase is not an access key id
    keeps(&r, "AKIAIOSFODNN7EXAMPLEX"); // 17 characters after AKIA
}

#[test]
fn bearer_tokens_positive_and_negative() {
    let r = all();
    masks(
        &r,
        "Authorization: Bearer eyJhbGciOi.J9eyJzdWIi.Ok",
        "eyJhbGciOi",
        "Authorization: Bearer [REDACTED:bearer]",
    );
    masks(
        &r,
        "bearer ya29.a0AfH6SMB",
        "ya29",
        "bearer [REDACTED:bearer]",
    );
    keeps(&r, "the bearer information was lost");
    keeps(&r, "Bearer abc1"); // too short to be a token
}

#[test]
fn email_positive_and_negative() {
    let r = all();
    masks(
        &r,
        "write to jane.doe+llm@mail.example.co.uk today",
        "jane.doe",
        "write to [REDACTED:email] today",
    );
    keeps(&r, "user@localhost");
    keeps(&r, "@example.com handle");
    keeps(&r, "a @ b.com");
}

#[test]
fn phones_positive_and_negative() {
    let r = all();
    masks(&r, "call +44 20 7946 0958.", "7946", "call +44");
    masks(&r, "+44 20 7946 0958", "7946", "+44*********0958"); // as docs/configuration.md shows
    masks(&r, "tel:+8613912345678", "1391234", "+86*******5678");
    // Luhn-valid by chance: the phone and card matches overlap and the union is masked whole
    masks(&r, "tel:+8613812345678", "1381234", "tel:[REDACTED:phone]");
    masks(&r, "手机13812345678。", "1381234", "138****5678");
    masks(&r, "m 19912345678", "1991234", "m 199****5678");
    keeps(&r, "+12345"); // too short for E.164
    keeps(&r, "version 1.2.3+4");
    keeps(&r, "12812345678"); // no mainland mobile starts with 12
    keeps(&r, "138123456789"); // 12 digits
    keeps(&r, "1381234567"); // 10 digits
    keeps(&r, "order 213812345678 shipped");
    masks(&r, "tel13912345678.", "1391234", "tel139****5678.");
    masks(
        &r,
        "13912345678,13812345678",
        "1234",
        "139****5678,138****5678",
    );
}

#[test]
fn cn_resident_ids_need_their_check_digit() {
    let r = all();
    masks(
        &r,
        "id 11010519491231002X ok",
        "11010519491231002X",
        "id [REDACTED:cn_id] ok",
    );
    masks(
        &r,
        "id 11010519491231002x",
        "11010519491231002x",
        "[REDACTED:cn_id]",
    );
    masks(
        &r,
        "440304199001011233",
        "440304199001011233",
        "[REDACTED:cn_id]",
    );
    masks(
        &r,
        "320106198512154412",
        "320106198512154412",
        "[REDACTED:cn_id]",
    );
    // one digit off: the check digit no longer matches
    keeps(&r, "id 110105194912310021 ok");
    keeps(&r, "440304199001011234");
    // a valid check digit but an impossible month
    keeps(&r, "440304199013011230");
    assert!(cn_id_checksum("11010519491231002X"));
    assert!(!cn_id_checksum("11010519491231002"));
}

#[test]
fn card_numbers_need_luhn() {
    let r = all();
    masks(
        &r,
        "card 4111 1111 1111 1111 exp",
        "1111 1111",
        "card [REDACTED:card] exp",
    );
    masks(&r, "4111-1111-1111-1111", "4111", "[REDACTED:card]");
    masks(
        &r,
        "5500000000000004",
        "5500000000000004",
        "[REDACTED:card]",
    );
    masks(
        &r,
        "amex 378282246310005",
        "378282246310005",
        "[REDACTED:card]",
    );
    keeps(&r, "card 4111 1111 1111 1112 exp"); // fails Luhn
    keeps(&r, "5500000000000005");
    keeps(&r, "ts 1732190000123"); // 13 digits, not Luhn-valid
    keeps(&r, "123456789012"); // 12 digits
                               // bounded by non-digits, not word boundaries; a card inside a longer run of digits
    masks(&r, "4111111111111111exp", "4111", "[REDACTED:card]exp");
    masks(
        &r,
        "1234 4111 1111 1111 1111",
        "4111 1111 1111 1111",
        "1234 [REDACTED:card]",
    );
    masks(
        &r,
        "4111 1111 1111 1111 2024",
        "4111",
        "[REDACTED:card] 2024",
    );
    masks(
        &r,
        "4111111111111111,5500000000000004",
        "5500",
        "[REDACTED:card],[REDACTED:card]",
    );
    assert!(!luhn("79927398713")); // Luhn-valid, but 11 digits: too short for a card
    assert!(luhn("4111111111111111"));
    assert!(!luhn("4111111111111121"));
}

#[test]
fn secrets_by_exact_value_and_overlaps_masked_whole() {
    let r = with_secrets(&["canary-provider-secret-77", "s3cr3t-header-value", "abc"]);
    masks(
        &r,
        "prefix canary-provider-secret-77 suffix",
        "canary-provider-secret-77",
        "prefix [REDACTED:secret] suffix",
    );
    masks(&r, "xs3cr3t-header-valuex", "s3cr3t", "x[REDACTED:secret]x");
    // too short to be matched by value
    keeps(&r, "abc");
    // a secret that overlaps an email: the union goes, nothing of either stays
    let r = with_secrets(&["secretvalue@exa"]);
    let out = r.text("to mysecretvalue@example.com now");
    assert!(!out.contains("secretvalue"), "{out}");
    assert!(!out.contains("example.com"), "{out}");
    assert!(out.ends_with(" now"), "{out}");
}

#[test]
fn user_rules_and_masks() {
    let names: Vec<String> = builtin_names().map(String::from).collect();
    let r = Redactor::new(
        Vec::new(),
        &names,
        &[
            RuleSpec {
                name: "employee".into(),
                pattern: Some(r"EMP-\d{6}".into()),
                mask: Mask::Keep {
                    prefix: 4,
                    suffix: 0,
                },
            },
            RuleSpec {
                name: "cn_mobile".into(),
                pattern: None,
                mask: Mask::Full,
            },
        ],
        Vec::new(),
    )
    .expect("rules");
    masks(&r, "by EMP-123456.", "123456", "by EMP-******.");
    masks(&r, "13812345678", "5678", "[REDACTED:cn_mobile]");

    let err = Redactor::new(
        Vec::new(),
        &["nope".to_string()],
        &[
            RuleSpec {
                name: "empty".into(),
                pattern: Some("a*".into()),
                mask: Mask::Full,
            },
            RuleSpec {
                name: "bad".into(),
                pattern: Some("(".into()),
                mask: Mask::Full,
            },
            RuleSpec {
                name: "email".into(),
                pattern: None,
                mask: Mask::Full,
            },
        ],
        Vec::new(),
    )
    .expect_err("mistakes");
    let text = format!("{err:?}");
    for needle in [
        "unknown built-in",
        "matches the empty string",
        "bad",
        "no built-in in use",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn json_paths_mask_fields_then_text_rules_run() {
    let names: Vec<String> = builtin_names().map(String::from).collect();
    let paths = vec![
        JsonPath::parse("$.user", Mask::Full).expect("path"),
        JsonPath::parse(
            "$.messages[*].name",
            Mask::Keep {
                prefix: 1,
                suffix: 0,
            },
        )
        .expect("path"),
        JsonPath::parse("$..ssn", Mask::Full).expect("path"),
    ];
    let r = Redactor::new(Vec::new(), &names, &[], paths).expect("rules");
    let body = br#"{"user":"alice-42","messages":[{"name":"Bobby","content":"mail me at bob@example.com"}],"meta":{"deep":{"ssn":123456789}}}"#;
    let (out, cut) = r.body(body, 1 << 20, true).expect("json");
    assert!(!cut);
    let v: Value = serde_json::from_str(&out).expect("still JSON");
    assert_eq!(v["user"], "[REDACTED:json_path]");
    assert_eq!(v["messages"][0]["name"], "B****");
    assert_eq!(v["messages"][0]["content"], "mail me at [REDACTED:email]");
    assert_eq!(v["meta"]["deep"]["ssn"], "[REDACTED:json_path]");

    // a partial mask never keeps the start of a secret: the value is masked whole
    let paths = vec![JsonPath::parse(
        "$.note",
        Mask::Keep {
            prefix: 4,
            suffix: 0,
        },
    )
    .expect("path")];
    let r2 = Redactor::new(
        vec!["canary-provider-secret-77".to_string()],
        &names,
        &[],
        paths,
    )
    .expect("rules");
    let (out, _) = r2
        .body(br#"{"note":"canary-provider-secret-77"}"#, 1 << 20, true)
        .expect("json");
    assert_eq!(out, r#"{"note":"[REDACTED:json_path]"}"#);
    let (out, _) = r2
        .body(br#"{"note":"plain words"}"#, 1 << 20, true)
        .expect("json");
    assert_eq!(out, r#"{"note":"plai*******"}"#);

    // SSE: each data line on its own
    let sse = b"data: {\"user\":\"carol\"}\n\ndata: [DONE]\n\n";
    let (out, _) = r.body(sse, 1 << 20, true).expect("sse");
    assert!(!out.contains("carol"), "{out}");
    assert!(out.contains("[DONE]"));

    // a cut JSON document cannot be path-masked: it is left out
    assert!(r.body(&body[..40], 1 << 20, false).is_none());
    // plain text with path rules: left out too
    assert!(r.body(b"not json", 1 << 20, true).is_none());
}

#[test]
fn bodies_are_cut_after_redaction() {
    let r = with_secrets(&["canary-provider-secret-77"]);
    let mut body = "x".repeat(95);
    body.push_str("canary-provider-secret-77 and more");
    // the cap falls inside the secret: the mask is cut, never the secret
    let (out, cut) = r.body(body.as_bytes(), 100, true).expect("text");
    assert!(cut);
    assert!(!out.contains("canary"), "{out}");
    assert!(out.len() <= 100);
    // multi-byte text is cut on a character boundary
    let (out, cut) = r.body("é".repeat(60).as_bytes(), 51, true).expect("text");
    assert!(cut);
    assert_eq!(out.chars().count(), 25);
}

#[test]
fn json_path_syntax_errors_are_specific() {
    for (path, needle) in [
        ("user", "starts with `$`"),
        ("$", "whole document"),
        ("$.a[", "not closed"),
        ("$.a[x]", "not an index"),
        ("$..", "needs a key"),
        ("$.a.", "empty key"),
        ("$a", "expected `.` or `[`"),
    ] {
        let e = JsonPath::parse(path, Mask::Full).expect_err(path);
        assert!(e.contains(needle), "{path}: {e}");
    }
    let p = JsonPath::parse("$.a['b c'][2].*", Mask::Full).expect("path");
    assert_eq!(
        p.steps,
        vec![
            Step::Key("a".into()),
            Step::Key("b c".into()),
            Step::Index(2),
            Step::Any
        ]
    );
}

/// How a client wrote its JSON: as UTF-8, with every non-ASCII character escaped
/// (Python's `json.dumps`, `requests`, `aiohttp`), or some of each.
#[derive(Clone, Copy, Debug)]
enum Spelling {
    Utf8,
    Escaped,
    Mixed,
}

fn spell(v: &Value, how: Spelling) -> String {
    let text = v.to_string();
    let mut out = String::new();
    let mut n = 0;
    for c in text.chars() {
        let escape = match how {
            Spelling::Utf8 => false,
            Spelling::Escaped => !c.is_ascii(),
            Spelling::Mixed => {
                n += usize::from(!c.is_ascii());
                !c.is_ascii() && n % 2 == 0
            }
        };
        if escape {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One case per built-in rule: the text, the part that must never be stored, the mask.
/// Each value starts right after a CJK character, so that once escaped the escape's
/// last hex digit touches it; "mixed" escapes every other non-ASCII character.
const PII: &[(&str, &str, &str)] = &[
    (
        "密钥sk-proj-AbCdEf0123456789xyz给你",
        "AbCdEf0123456789",
        "[REDACTED:api_key]",
    ),
    (
        "令牌bearer ya29.a0AfH6SMBxyz。",
        "ya29.a0AfH6SMB",
        "[REDACTED:bearer]",
    ),
    (
        "邮箱jane.doe@example.com谢谢",
        "jane.doe@example.com",
        "[REDACTED:email]",
    ),
    ("电话+44 20 7946 0958。", "7946 0958", "+44*********0958"),
    ("号码13812345678，", "13812345678", "138****5678"),
    (
        "身份证11010519491231002X号",
        "11010519491231002X",
        "[REDACTED:cn_id]",
    ),
    (
        "卡号4111111111111111，🙂",
        "4111111111111111",
        "[REDACTED:card]",
    ),
];

/// Nothing of `gone` in the stored text, in any spelling.
fn assert_gone(stored: &str, gone: &str, ctx: &str) {
    assert!(!stored.contains(gone), "{ctx}: {gone:?} stored: {stored}");
    let digits: String = gone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 8 {
        let stored_digits: String = stored.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !stored_digits.contains(&digits),
            "{ctx}: the digits of {gone:?} survive: {stored}"
        );
    }
}

#[test]
fn every_rule_masks_json_bodies_however_the_client_escaped_them() {
    let r = all();
    for &(text, gone, shown) in PII {
        for how in [Spelling::Utf8, Spelling::Escaped, Spelling::Mixed] {
            let ctx = format!("{text} as {how:?}");
            let request = serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": text}],
            });
            let response = serde_json::json!({
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            });
            let chunk = |content: &str| {
                serde_json::json!({
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": content}}],
                })
            };
            let sse = format!(
                "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
                spell(&chunk(text), how),
                spell(&chunk("."), how)
            );
            for (kind, body) in [
                ("request", spell(&request, how)),
                ("response", spell(&response, how)),
            ] {
                let (out, cut) = r.body(body.as_bytes(), 1 << 20, true).expect("body");
                assert!(!cut);
                assert_gone(&out, gone, &format!("{ctx}, {kind}"));
                let v: Value = serde_json::from_str(&out)
                    .unwrap_or_else(|e| panic!("{ctx}, {kind}: not JSON ({e}): {out}"));
                let content = if kind == "request" {
                    &v["messages"][0]["content"]
                } else {
                    &v["choices"][0]["message"]["content"]
                };
                let content = content.as_str().expect("content stays a string");
                assert!(content.contains(shown), "{ctx}, {kind}: {content}");
                // what is not PII is kept, decoded
                assert!(!content.is_ascii(), "{ctx}: {content}");
            }
            let (out, _) = r.body(sse.as_bytes(), 1 << 20, true).expect("sse");
            assert_gone(&out, gone, &format!("{ctx}, sse"));
            let data: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            assert_eq!(data.len(), 3, "{ctx}: {out}");
            assert_eq!(data[2], "[DONE]");
            let first: Value = serde_json::from_str(data[0])
                .unwrap_or_else(|e| panic!("{ctx}, sse: not JSON ({e}): {out}"));
            let content = first["choices"][0]["delta"]["content"].as_str().unwrap();
            assert!(content.contains(shown), "{ctx}, sse: {content}");
        }
    }
}

#[test]
fn text_that_is_not_json_is_matched_through_its_escapes() {
    let r = all();
    // a body cut before its end is not JSON: the rules still see through the escapes,
    // and an escape is never cut in half by a mask
    for &(text, gone, shown) in PII {
        let body = spell(&serde_json::json!({ "content": text }), Spelling::Escaped);
        let cut = &body[..body.len() - 2];
        let (out, _) = r.body(cut.as_bytes(), 1 << 20, false).expect("text");
        assert_gone(&out, gone, text);
        assert!(out.contains(shown), "{text}: {out}");
        let unmasked = out.replace(shown, "");
        let mut rest = unmasked.as_str();
        while let Some(i) = rest.find("\\u") {
            let hex = rest.get(i + 2..i + 6).unwrap_or_default();
            assert!(
                hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{text}: a broken escape in {out}"
            );
            rest = &rest[i + 6..];
        }
    }
    // escaped digits are digits too
    let out = r.text_escaped(r"call \u0031\u00338\u0031\u0032345678 now", Escapes::Json);
    assert_eq!(out, r"call 138****5678 now");
    // SSE lines that are not JSON, and event/id lines
    let sse = "event: note\ndata: \\u53f713812345678\n\n";
    let (out, _) = r.body(sse.as_bytes(), 1 << 20, true).expect("sse");
    assert_eq!(out, "event: note\ndata: \\u53f7138****5678\n\n");
    // URLs: percent-encoding
    let out = r.text_escaped(
        "/v1/chat?tel=%2B8613912345678&m=%E5%8F%B713812345678",
        Escapes::Percent,
    );
    assert!(!out.contains("1234567"), "{out}");
    assert!(out.contains("tel=+86*******5678"), "{out}");
    // numbers in JSON are values too
    let (out, _) = r
        .body(br#"{"card":4111111111111111,"n":42}"#, 1 << 20, true)
        .expect("json");
    assert_eq!(out, r#"{"card":"[REDACTED:card]","n":42}"#);
    // keys keep their order, and a key that is PII is masked
    let (out, _) = r
        .body(br#"{"z":1,"jane@example.com":2,"a":3}"#, 1 << 20, true)
        .expect("json");
    assert_eq!(out, r#"{"z":1,"[REDACTED:email]":2,"a":3}"#);
}
