//! Gemini on Vertex AI: `…/publishers/google/models/{id}:generateContent` and
//! `:streamGenerateContent` (SSE with `?alt=sse`). Requests are checked against the
//! documented shape, as Gemini 3 checks them: every function call replayed in the history
//! must carry the `thoughtSignature` it was sent with, and function responses must answer
//! the calls of the model turn before them, one for one. The mock signs its own calls
//! (`sig-mock-…`), so a client that loses a signature is refused.

use super::bedrock::Turn;
use super::{estimate_tokens, json_response, sse_response, word, Body};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

/// Gemini's error body.
fn error(status: u16, message: &str) -> Response<Body> {
    let s = match status {
        400 => "INVALID_ARGUMENT",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        _ => "INTERNAL",
    };
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &json!({"error": {"code": status, "message": message, "status": s}}),
    )
}

pub(super) fn answer(route: &str, body: &[u8], t: &Turn) -> Response<Body> {
    let Some((_, rest)) = route.split_once("/publishers/google/models/") else {
        return error(404, "Not found.");
    };
    let Some((model, method)) = rest.rsplit_once(':') else {
        return error(404, "Method not found.");
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return error(404, "Method not found."),
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(400, "Invalid JSON payload received.");
    };
    if let Err(m) = check_generate(&req) {
        return error(400, &m);
    }
    let input = estimate_tokens(&req["contents"]);
    let cap = req["generationConfig"]["maxOutputTokens"].as_u64();
    let tokens = cap.map_or(t.chunks, |c| (c as usize).min(t.chunks));
    let finish = if cap.is_some_and(|c| (c as usize) < t.chunks) {
        "MAX_TOKENS"
    } else {
        "STOP"
    };
    let decls: Vec<&Value> = req["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["functionDeclarations"].as_array())
        .flatten()
        .collect();
    let mode = req["toolConfig"]["functionCallingConfig"]["mode"]
        .as_str()
        .unwrap_or("AUTO");
    let calls = if decls.is_empty() || mode == "NONE" {
        0
    } else {
        t.calls.map_or(usize::from(mode == "ANY"), |n| n as usize)
    };
    let usage = |out: usize| json!({"promptTokenCount": input, "candidatesTokenCount": out, "totalTokenCount": input + out as u64, "trafficType": "ON_DEMAND"});
    let id = format!("mockresp{}", t.n);
    let call_parts: Vec<Value> = (0..calls)
        .map(|i| {
            let d = decls[i % decls.len()];
            let mut args = serde_json::Map::new();
            if let Some(p) = d["parameters"]["properties"].as_object() {
                for k in p.keys() {
                    args.insert(k.clone(), format!("mock-{k}-{i}").into());
                }
            }
            let mut part = json!({"functionCall": {"name": d["name"], "args": args}});
            if i == 0 {
                // Gemini signs the first call of a turn.
                part["thoughtSignature"] = format!("sig-mock-{}-{i}", t.n).into();
            }
            part
        })
        .collect();
    if !stream {
        let parts = if calls > 0 {
            call_parts
        } else {
            vec![json!({"text": (0..tokens).map(word).collect::<String>()})]
        };
        let out = if calls > 0 { 10 + calls } else { tokens };
        return json_response(
            StatusCode::OK,
            &json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": if calls > 0 { "STOP" } else { finish }}],
                    "usageMetadata": usage(out), "modelVersion": model, "responseId": id}),
        );
    }
    let ev = |v: Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let mut events = Vec::new();
    if calls > 0 {
        events.push(ev(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me check."}]}}], "modelVersion": model, "responseId": id})));
        events.push(ev(json!({"candidates": [{"content": {"role": "model", "parts": call_parts}, "finishReason": "STOP"}],
            "usageMetadata": usage(10 + calls), "modelVersion": model, "responseId": id})));
    } else {
        for i in 0..tokens {
            let mut c = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": word(i)}]}}], "modelVersion": model, "responseId": id});
            if i + 1 == tokens {
                c["candidates"][0]["finishReason"] = finish.into();
                c["usageMetadata"] = usage(tokens);
            }
            events.push(ev(c));
        }
        if tokens == 0 {
            events.push(ev(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": finish}], "usageMetadata": usage(0)})));
        }
    }
    sse_response(events, t.interval, t.stall_after)
}

/// Checks a generateContent request; the message names the first problem.
pub fn check_generate(req: &Value) -> Result<(), String> {
    const TOP: &[&str] = &[
        "contents",
        "systemInstruction",
        "generationConfig",
        "tools",
        "toolConfig",
        "safetySettings",
        "cachedContent",
        "labels",
    ];
    let Some(o) = req.as_object() else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    if let Some(k) = o.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."
        ));
    }
    if let Some(g) = req.get("generationConfig") {
        const GEN: &[&str] = &[
            "maxOutputTokens",
            "temperature",
            "topP",
            "topK",
            "stopSequences",
            "thinkingConfig",
            "candidateCount",
            "presencePenalty",
            "frequencyPenalty",
            "seed",
            "responseMimeType",
            "responseSchema",
        ];
        for (k, v) in g.as_object().into_iter().flatten() {
            if !GEN.contains(&k.as_str()) {
                return Err(format!("Invalid JSON payload received. Unknown name \"{k}\" at 'generation_config': Cannot find field."));
            }
            if k == "temperature" && !v.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
                return Err("Unable to submit request because it has a temperature value outside the range [0, 2].".into());
            }
        }
    }
    if let Some(s) = req.get("systemInstruction") {
        if !s["parts"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["text"].is_string()))
        {
            return Err("systemInstruction must hold text parts.".into());
        }
    }
    for (i, t) in req["tools"].as_array().into_iter().flatten().enumerate() {
        for (j, d) in t["functionDeclarations"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !d["name"].is_string() {
                return Err(format!(
                    "tools[{i}].function_declarations[{j}].name: required"
                ));
            }
            if has_key(&d["parameters"], "additionalProperties") {
                return Err(format!("Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[{i}].function_declarations[{j}].parameters': Cannot find field."));
            }
        }
    }
    let Some(contents) = req["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Err("Unable to submit request because it must include at least one parts field, which describes the prompt input.".into());
    };
    let mut last_calls: Vec<String> = Vec::new();
    let mut prev_role = "";
    for (i, c) in contents.iter().enumerate() {
        let role = c["role"].as_str().unwrap_or("");
        if role != "user" && role != "model" {
            return Err(format!(
                "Please use a valid role: user, model. (contents[{i}])"
            ));
        }
        if role == prev_role {
            return Err(format!(
                "contents[{i}]: roles must alternate between user and model."
            ));
        }
        prev_role = role;
        let Some(parts) = c["parts"].as_array().filter(|p| !p.is_empty()) else {
            return Err(format!("contents[{i}].parts must not be empty."));
        };
        let mut calls = Vec::new();
        let mut responses = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            let data: Vec<&String> = p
                .as_object()
                .map(|o| {
                    o.keys()
                        .filter(|k| !["thought", "thoughtSignature"].contains(&k.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            if data.len() != 1 {
                return Err(format!("contents[{i}].parts[{j}] must hold exactly one of text, inlineData, fileData, functionCall, functionResponse."));
            }
            match data[0].as_str() {
                "text" => {}
                "inlineData" => {
                    if !p["inlineData"]["mimeType"].is_string()
                        || !p["inlineData"]["data"].is_string()
                    {
                        return Err(format!(
                            "contents[{i}].parts[{j}].inlineData needs mimeType and data."
                        ));
                    }
                }
                "fileData" => {
                    if p["fileData"]["mimeType"].as_str().is_none_or(str::is_empty) {
                        return Err(format!(
                            "contents[{i}].parts[{j}].fileData.mimeType is required."
                        ));
                    }
                }
                "functionCall" if role == "model" => {
                    let sig = p["thoughtSignature"].as_str().unwrap_or("");
                    if calls.is_empty() && !sig.starts_with("sig-mock-") {
                        return Err(format!("Function call is missing a thought_signature in functionCall parts. (contents[{i}].parts[{j}])"));
                    }
                    calls.push(p["functionCall"]["name"].as_str().unwrap_or("").to_string());
                }
                "functionResponse" if role == "user" => {
                    responses.push(
                        p["functionResponse"]["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    );
                    if !p["functionResponse"]["response"].is_object() {
                        return Err(format!(
                            "contents[{i}].parts[{j}].functionResponse.response must be an object."
                        ));
                    }
                }
                k => {
                    return Err(format!(
                        "contents[{i}].parts[{j}]: {k} is not valid for role {role}."
                    ))
                }
            }
        }
        if role == "user" && !last_calls.is_empty() {
            let mut want = last_calls.clone();
            let mut got = responses.clone();
            want.sort();
            got.sort();
            if want != got {
                return Err("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".into());
            }
        } else if role == "user" && !responses.is_empty() {
            return Err(format!(
                "contents[{i}]: a function response must follow a function call turn."
            ));
        }
        last_calls = calls;
    }
    Ok(())
}

fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(o) => o.contains_key(key) || o.values().any(|v| has_key(v, key)),
        Value::Array(a) => a.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}
