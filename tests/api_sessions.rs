//! The session client and the `fhenode session` commands against a stand-in API that answers
//! like a node's (same routes, same error shape, the real update parser). The real routes with
//! real nodes are covered by the network tests.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{Path as UrlPath, Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fhenode::api::sessions::{accepts, parse_update, update_format};
use fhenode::api::ApiError;
use fhenode::client::{ApiClient, ClientError, UpdateFormat};
use fhenode::session::{Phase, ResultKind, SessionInfo, SessionResult, SessionSpec, SubmitReceipt};
use fhenode::tensors::{read_body, Body, IntegerPolicy, Layout};
use serde_json::{json, Value};

const TOKEN: &str = "a-test-token-of-some-length";

fn info(id: &str, length: u64) -> SessionInfo {
    serde_json::from_value(json!({
        "id": id,
        "phase": Phase::Collecting,
        "roles": {"coordinator": true, "committee": false, "participant": true},
        "coordinator": "12D3KooWcoordinator",
        "profile": "fast",
        "length": length,
        "result_kind": "mean",
        "committee": 1,
        "threshold": 1,
        "participants": 2,
        "min_participants": 2,
        "members_ready": 1,
        "seeds_delivered": 0,
        "seeds_held": 0,
        "submissions": 0,
        "releases": 0,
        "deadline_secs": 300,
        "timings": {"created_ms": 1},
        "failure": null,
    }))
    .unwrap()
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

async fn auth(headers: HeaderMap, request: Request, next: Next) -> Response {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if ok {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token",
        )
    }
}

fn the_result() -> SessionResult {
    SessionResult {
        session: "done".into(),
        kind: ResultKind::Sum,
        contributors: 2,
        contributor_ids: vec!["a".into(), "b".into()],
        clipped: 1,
        error_bound: 0.25,
        total_weight: None,
        values: vec![1.5, -2.25, 1e10],
    }
}

/// A stand-in for a node's session API.
async fn stand_in() -> String {
    let router = Router::new()
        .route(
            "/v1/sessions",
            post(|Json(spec): Json<SessionSpec>| async move {
                let id = spec.id.clone().unwrap_or_else(|| "s-generated".into());
                (
                    StatusCode::CREATED,
                    Json(info(&id, spec.length.unwrap_or(0))),
                )
            })
            .get(|| async { Json(json!({"sessions": [info("one", 4), info("two", 8)]})) }),
        )
        .route(
            "/v1/sessions/{id}",
            get(
                |UrlPath(id): UrlPath<String>, query: Query<HashMap<String, String>>| async move {
                    // A long poll on a session that never moves lasts its whole wait.
                    if let Some(secs) = query.get("wait").and_then(|w| w.parse::<u64>().ok()) {
                        if id == "one" {
                            tokio::time::sleep(std::time::Duration::from_secs(secs.min(2))).await;
                        }
                    }
                    let with_phase = |phase: Phase, failure: Option<&str>| {
                        let mut s = info(&id, 3);
                        s.phase = phase;
                        s.failure = failure.map(str::to_string);
                        Json(s).into_response()
                    };
                    match id.as_str() {
                        "one" => Json(info("one", 4)).into_response(),
                        "done" => with_phase(Phase::Done, None),
                        "doomed" => with_phase(Phase::Failed, Some("only 1 of 2 submitted")),
                        _ => error(
                            StatusCode::NOT_FOUND,
                            "unknown_session",
                            &format!("unknown session `{id}`"),
                        ),
                    }
                },
            ),
        )
        .route(
            "/v1/sessions/{id}/update",
            post(
                |UrlPath(id): UrlPath<String>, headers: HeaderMap, body: Bytes| async move {
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok());
                    // The stand-in's sessions take as many values as a flat body holds.
                    let parsed = update_format(ct).and_then(|format| {
                        let length = match read_body(format, &body, 1 << 20) {
                            Ok((Body::Flat(values), _)) => values.len(),
                            _ => 1,
                        };
                        parse_update(
                            format,
                            &body,
                            &Layout::new(None, length),
                            IntegerPolicy::Refuse,
                        )
                    });
                    let values = match parsed {
                        Ok((values, _)) => values,
                        Err(e) => return e.into_response(),
                    };
                    Json(SubmitReceipt {
                        session: id,
                        values: values.len() as u64,
                        clipped: values.iter().filter(|v| v.abs() > 8.0).count() as u64,
                        bytes_sent: 0,
                        pieces: 1,
                        digest: format!("{:?}", values),
                        encrypt_ms: 0.0,
                        upload_ms: 0.0,
                        prepared: false,
                    })
                    .into_response()
                },
            ),
        )
        .route(
            "/v1/sessions/{id}/result",
            get(
                |UrlPath(id): UrlPath<String>, headers: HeaderMap| async move {
                    if id != "done" {
                        return error(
                            StatusCode::CONFLICT,
                            "no_result",
                            "session `x` has no result yet (collecting)",
                        );
                    }
                    let result = the_result();
                    if accepts(
                        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
                        "application/octet-stream",
                    ) {
                        let body: Vec<u8> =
                            result.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                        (
                            [
                                ("content-type", "application/octet-stream"),
                                ("x-fhenode-contributors", "2"),
                                ("x-fhenode-clipped", "1"),
                                ("x-fhenode-error-bound", "0.25"),
                                ("x-fhenode-kind", "sum"),
                            ],
                            body,
                        )
                            .into_response()
                    } else {
                        Json(result).into_response()
                    }
                },
            ),
        )
        .route_layer(middleware::from_fn(auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_client_speaks_the_session_api() {
    let api = stand_in().await;
    let client = ApiClient::new(&api, Some(TOKEN)).unwrap();

    let spec = SessionSpec {
        id: Some("mine".into()),
        length: Some(3),
        ..Default::default()
    };
    assert_eq!(client.create_session(&spec).await.unwrap().id, "mine");
    let list = client.list_sessions().await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(client.session("one").await.unwrap().length, 4);

    let receipt = client.submit_values("one", &[1.0, 2.0, 9.0]).await.unwrap();
    assert_eq!((receipt.values, receipt.clipped), (3, 1));
    let receipt = client
        .submit_update(
            "one",
            UpdateFormat::Json,
            br#"{"values":[0.5]}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(receipt.values, 1);

    assert_eq!(client.result("done").await.unwrap(), the_result());
    let raw = client.result_raw("done").await.unwrap();
    assert_eq!(raw.values(), the_result().values);
    assert_eq!(
        (
            raw.contributors,
            raw.clipped,
            raw.error_bound,
            raw.kind.as_str()
        ),
        (2, 1, 0.25, "sum")
    );

    match client.result("pending").await {
        Err(ClientError::Api {
            status: 409, code, ..
        }) => assert_eq!(code, "no_result"),
        other => panic!("{other:?}"),
    }
    match client.session("a/b").await {
        Err(ClientError::Api {
            status: 404,
            code,
            message,
        }) => {
            assert_eq!(code, "unknown_session");
            assert!(
                message.contains("a/b"),
                "the id travels percent-encoded: {message}"
            );
        }
        other => panic!("{other:?}"),
    }
    match client
        .submit_update("one", UpdateFormat::Raw, vec![0; 5], None)
        .await
    {
        Err(ClientError::Api {
            status: 400, code, ..
        }) => assert_eq!(code, "bad_input"),
        other => panic!("{other:?}"),
    }
    let anonymous = ApiClient::new(&api, None).unwrap();
    match anonymous.list_sessions().await {
        Err(ClientError::Api {
            status: 401, code, ..
        }) => assert_eq!(code, "unauthorized"),
        other => panic!("{other:?}"),
    }
    let nowhere = ApiClient::new("http://127.0.0.1:1", None).unwrap();
    assert!(matches!(
        nowhere.list_sessions().await,
        Err(ClientError::Transport { .. })
    ));
}

/// Runs `fhenode session ARGS` against `api` with the token in the environment.
async fn cli(api: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhenode"));
    command
        .arg("session")
        .args(args)
        .arg("--api")
        .arg(api)
        .env("FHENODE_API_TOKEN", TOKEN)
        .current_dir(std::env::temp_dir());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn npy_f64(path: &Path, values: &[f64]) {
    use npyz::WriterBuilder;
    let mut file = std::fs::File::create(path).unwrap();
    let mut writer = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&[values.len() as u64])
        .writer(&mut file)
        .begin_nd()
        .unwrap();
    writer.extend(values.iter().copied()).unwrap();
    writer.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_commands() {
    let api = stand_in().await;
    let dir = tempfile::tempdir().unwrap();

    let created = stdout_json(
        &cli(
            &api,
            &[
                "create",
                "--length",
                "3",
                "--committee",
                "a,b",
                "--participants",
                "c,d",
                "--id",
                "cli",
            ],
        )
        .await,
    );
    assert_eq!(created["id"], "cli");
    assert_eq!(created["length"], 3);
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"id": "from-file", "length": 7, "committee": [], "participants": []}"#,
    )
    .unwrap();
    let created = stdout_json(&cli(&api, &["create", "--spec", spec.to_str().unwrap()]).await);
    assert_eq!(
        (created["id"].as_str(), created["length"].as_u64()),
        (Some("from-file"), Some(7))
    );

    let list = stdout_json(&cli(&api, &["list"]).await);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(stdout_json(&cli(&api, &["show", "one"]).await)["id"], "one");

    // Each file kind goes with its content type.
    let json_file = dir.path().join("u.json");
    std::fs::write(&json_file, "[1, 2, 3, 4]").unwrap();
    let npy_file = dir.path().join("u.npy");
    npy_f64(&npy_file, &[0.5, 10.0]);
    let raw_file = dir.path().join("u.f32");
    let mut f = std::fs::File::create(&raw_file).unwrap();
    f.write_all(
        &[1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for (file, values, clipped) in [(&json_file, 4, 0), (&npy_file, 2, 1), (&raw_file, 3, 0)] {
        let receipt =
            stdout_json(&cli(&api, &["submit", "one", "--values", file.to_str().unwrap()]).await);
        assert_eq!(
            (receipt["values"].as_u64(), receipt["clipped"].as_u64()),
            (Some(values), Some(clipped))
        );
    }

    // submit --wait: plain progress lines on stderr (not a terminal here), the receipt on
    // stdout once the session is done; a session that fails is an error.
    let json = json_file.to_str().unwrap();
    let submitted = cli(&api, &["submit", "done", "--values", json, "--wait", "5"]).await;
    let stderr = String::from_utf8_lossy(&submitted.stderr).to_string();
    assert!(
        stderr.contains("session done: sending 12 bytes")
            && stderr.contains("session done: submitted 4 values")
            && stderr.contains("session done: done"),
        "{stderr}"
    );
    assert_eq!(stdout_json(&submitted)["values"], 4);
    let doomed = cli(&api, &["submit", "doomed", "--values", json, "--wait", "5"]).await;
    assert_eq!(doomed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&doomed.stderr).contains("failed: only 1 of 2 submitted"));

    let result = stdout_json(&cli(&api, &["result", "done"]).await);
    assert_eq!(result["values"], json!([1.5, -2.25, 1e10]));
    // --wait: the phases on stderr, then the result; a failure or a session still running
    // at the end of the wait is an error.
    let waited = cli(&api, &["result", "done", "--wait", "5"]).await;
    assert!(String::from_utf8_lossy(&waited.stderr).contains("session done: done"));
    assert_eq!(stdout_json(&waited)["values"], json!([1.5, -2.25, 1e10]));
    let doomed = cli(&api, &["result", "doomed", "--wait", "5"]).await;
    assert_eq!(doomed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&doomed.stderr).contains("failed: only 1 of 2 submitted"),
        "{}",
        String::from_utf8_lossy(&doomed.stderr)
    );
    let running = cli(&api, &["result", "one", "--wait", "1"]).await;
    assert_eq!(running.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&running.stderr);
    assert!(
        stderr.contains("session one: collecting") && stderr.contains("still collecting after 1 s"),
        "{stderr}"
    );
    // --raw: little-endian f64 on stdout (not a terminal here), the facts on stderr.
    let raw = cli(&api, &["result", "done", "--raw"]).await;
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let values: Vec<f64> = raw
        .stdout
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, vec![1.5, -2.25, 1e10]);
    let facts: Value = serde_json::from_slice(&raw.stderr).unwrap();
    assert_eq!(
        (facts["contributors"].as_u64(), facts["kind"].as_str()),
        (Some(2), Some("sum"))
    );

    // API errors: code and message on stderr, non-zero exit, nothing on stdout.
    let failed = cli(&api, &["result", "pending"]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(failed.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("no_result") && stderr.contains("no result yet"),
        "{stderr}"
    );
    let failed = cli(&api, &["submit", "one", "--values", "/nonexistent/u.npy"]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("cannot read"));
}
