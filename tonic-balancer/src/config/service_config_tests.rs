use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tonic::Code;

use super::json::parse_duration;
use super::*;

/// A valid config using every field; the tables below break one field at a time.
const VALID: &str = r#"{
  "loadBalancingConfig": [{"grpclb": {}}, {"least_request": {"choiceCount": 3}}, {"nope": 1}],
  "methodConfig": [
    {"name": [{}], "timeout": "5s"},
    {"name": [{"service": "pkg.Svc"}], "waitForReady": true,
     "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 4]}},
    {"name": [{"service": "pkg.Svc", "method": "Get"}], "timeout": "1.5s",
     "maxRequestMessageBytes": 4194304, "maxResponseMessageBytes": "1024",
     "hedgingPolicy": {"maxAttempts": 7, "hedgingDelay": "0.5s", "nonFatalStatusCodes": [14]}}
  ],
  "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
  "healthCheckConfig": {"serviceName": ""}
}"#;

fn valid() -> Value {
    serde_json::from_str(VALID).unwrap()
}

/// `VALID` with the field at JSON pointer `at` set to `to` (added if absent), or removed.
fn with(at: &str, to: Option<Value>) -> String {
    let mut config = valid();
    let (parent, key) = at.rsplit_once('/').unwrap();
    match (config.pointer_mut(parent).unwrap(), to) {
        (Value::Object(fields), Some(to)) => drop(fields.insert(key.to_owned(), to)),
        (Value::Object(fields), None) => drop(fields.remove(key)),
        (Value::Array(items), Some(to)) => items[key.parse::<usize>().unwrap()] = to,
        _ => panic!("bad pointer {at}"),
    }
    config.to_string()
}

/// Parses `VALID` changed as [`with`] does.
fn parse_with(at: &str, to: Option<Value>) -> Result<ServiceConfig, InvalidConfig> {
    ServiceConfig::from_json(&with(at, to))
}

fn expected() -> ServiceConfig {
    let default = MethodConfig {
        names: vec![MethodPattern::default_all()],
        timeout: Some(Duration::from_secs(5)),
        ..MethodConfig::default()
    };
    let service = MethodConfig {
        names: vec![MethodPattern::service("pkg.Svc")],
        wait_for_ready: Some(true),
        retry_policy: Some(RetryPolicy::new(
            3,
            Duration::from_millis(100),
            Duration::from_secs(1),
            2.0,
            vec![Code::Unavailable, Code::DeadlineExceeded],
        )),
        ..MethodConfig::default()
    };
    let exact = MethodConfig {
        names: vec![MethodPattern::method("pkg.Svc", "Get")],
        timeout: Some(Duration::from_millis(1500)),
        max_request_message_bytes: Some(4_194_304),
        max_response_message_bytes: Some(1024),
        hedging_policy: Some(HedgingPolicy {
            hedging_delay: Duration::from_millis(500),
            non_fatal_status_codes: vec![Code::Unavailable],
            ..HedgingPolicy::new(5)
        }),
        ..MethodConfig::default()
    };
    ServiceConfig {
        load_balancing: Some(LoadBalancingConfig::LeastRequest { choice_count: 3 }),
        method_configs: vec![default, service, exact],
        retry_throttling: Some(RetryThrottling::new(10.0, 0.1)),
        health_check: Some(HealthCheckConfig::default()),
        max_concurrent_requests: None,
        drop_overloads: Vec::new(),
    }
}

#[test]
fn parses_every_field() {
    let config = ServiceConfig::from_json(VALID).unwrap();
    assert_eq!(config, expected());
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn exact_beats_service_beats_default() {
    let map = ServiceConfig::from_json(VALID).unwrap().method_map();
    let timeout = |path| map.get(path).as_ref().and_then(|m| m.timeout);
    assert_eq!(timeout("/pkg.Svc/Get"), Some(Duration::from_millis(1500)));
    assert!(
        map.get("/pkg.Svc/Put")
            .as_ref()
            .unwrap()
            .retry_policy
            .is_some()
    );
    assert_eq!(timeout("/other.Svc/Get"), Some(Duration::from_secs(5)));

    let map = parse_with("/methodConfig/0/name", Some(json!([])))
        .unwrap()
        .method_map();
    assert!(map.get("/other.Svc/Get").is_none());
    assert!(map.get("/pkg.Svc/Get").is_some());
}

#[test]
fn invalid_fields_are_named_by_path() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<Value>, &str, &str)> = vec![
        ("/methodConfig/1/retryPolicy/maxAttempts", Some(json!(1)), "methodConfig[1].retryPolicy.maxAttempts", "must be > 1, got 1"),
        ("/methodConfig/1/retryPolicy/maxAttempts", Some(json!(-4)), "methodConfig[1].retryPolicy.maxAttempts", "must be > 1, got -4"),
        ("/methodConfig/1/retryPolicy/maxAttempts", Some(json!("3")), "methodConfig[1].retryPolicy.maxAttempts", "must be an integer, got a string"),
        ("/methodConfig/1/retryPolicy/maxAttempts", Some(json!(2.5)), "methodConfig[1].retryPolicy.maxAttempts", "integer"),
        ("/methodConfig/1/retryPolicy/maxAttempts", None, "methodConfig[1].retryPolicy.maxAttempts", "required"),
        ("/methodConfig/1/retryPolicy/initialBackoff", Some(json!("0s")), "methodConfig[1].retryPolicy.initialBackoff", "> 0s"),
        ("/methodConfig/1/retryPolicy/initialBackoff", None, "methodConfig[1].retryPolicy.initialBackoff", "required"),
        ("/methodConfig/1/retryPolicy/maxBackoff", Some(json!("-1s")), "methodConfig[1].retryPolicy.maxBackoff", "negative"),
        ("/methodConfig/1/retryPolicy/maxBackoff", Some(json!("1")), "methodConfig[1].retryPolicy.maxBackoff", "'s' suffix"),
        ("/methodConfig/1/retryPolicy/backoffMultiplier", Some(json!(0)), "methodConfig[1].retryPolicy.backoffMultiplier", "must be > 0"),
        ("/methodConfig/1/retryPolicy/backoffMultiplier", Some(json!("2")), "methodConfig[1].retryPolicy.backoffMultiplier", "number"),
        ("/methodConfig/1/retryPolicy/retryableStatusCodes", Some(json!([])), "methodConfig[1].retryPolicy.retryableStatusCodes", "empty"),
        ("/methodConfig/1/retryPolicy/retryableStatusCodes", Some(json!("UNAVAILABLE")), "methodConfig[1].retryPolicy.retryableStatusCodes", "array"),
        ("/methodConfig/1/retryPolicy/retryableStatusCodes", Some(json!([14, "unavailable"])), "methodConfig[1].retryPolicy.retryableStatusCodes[1]", "upper case"),
        ("/methodConfig/1/retryPolicy/retryableStatusCodes", Some(json!([17])), "methodConfig[1].retryPolicy.retryableStatusCodes[0]", "0..=16"),
        ("/methodConfig/1/retryPolicy/retryableStatusCodes", Some(json!(["14"])), "methodConfig[1].retryPolicy.retryableStatusCodes[0]", "upper case"),
        ("/methodConfig/1/retryPolicy", Some(json!([])), "methodConfig[1].retryPolicy", "object"),
        ("/methodConfig/1/waitForReady", Some(json!("true")), "methodConfig[1].waitForReady", "boolean"),
        ("/methodConfig/2/hedgingPolicy/maxAttempts", Some(json!(0)), "methodConfig[2].hedgingPolicy.maxAttempts", "> 1"),
        ("/methodConfig/2/hedgingPolicy/maxAttempts", None, "methodConfig[2].hedgingPolicy.maxAttempts", "required"),
        ("/methodConfig/2/hedgingPolicy/hedgingDelay", Some(json!("1e3s")), "methodConfig[2].hedgingPolicy.hedgingDelay", "duration"),
        ("/methodConfig/2/hedgingPolicy/nonFatalStatusCodes/0", Some(json!("Unavailable")), "methodConfig[2].hedgingPolicy.nonFatalStatusCodes[0]", "upper case"),
        ("/methodConfig/2/timeout", Some(json!("-1s")), "methodConfig[2].timeout", "negative"),
        ("/methodConfig/1/TIMEOUT", Some(json!("3c")), "methodConfig[1].TIMEOUT", "'s' suffix"),
        ("/methodConfig/0/WaitForReady", Some(json!("yes")), "methodConfig[0].WaitForReady", "boolean"),
        ("/loadBalancingConfig/0", Some(json!({"pick_first": {"shuffleAddressList": "yes"}})), "loadBalancingConfig[0].pick_first.shuffleAddressList", "boolean"),
        ("/loadBalancingConfig/0", Some(json!({"least_request_experimental": {"choiceCount": 1}})), "loadBalancingConfig[0].least_request_experimental.choiceCount", "must be > 1"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {}})), "loadBalancingConfig[0].outlier_detection_experimental.childPolicy", "required"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"x": {}}]}})), "loadBalancingConfig[0].outlier_detection_experimental.childPolicy", "no supported policy in [x]"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": 101}})), "loadBalancingConfig[0].outlier_detection_experimental.maxEjectionPercent", "at most 100"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": -1}})), "loadBalancingConfig[0].outlier_detection_experimental.maxEjectionPercent", "0..=4294967295"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"round_robin": {}}], "interval": "0s"}})), "loadBalancingConfig[0].outlier_detection_experimental.interval", "> 0s"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"round_robin": {}}], "failurePercentageEjection": {"threshold": 200}}})), "loadBalancingConfig[0].outlier_detection_experimental.failurePercentageEjection.threshold", "at most 100"),
        ("/loadBalancingConfig/0", Some(json!({"outlier_detection_experimental": {"childPolicy": [{"least_request": {"choiceCount": 0}}]}})), "loadBalancingConfig[0].outlier_detection_experimental.childPolicy[0].least_request.choiceCount", "must be > 1"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "required"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 0, "childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "must be > 0"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": -3, "childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "0..=4294967295"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 2.5, "childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "0..=4294967295"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": "10", "childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "got a string"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 4294967296_u64, "childPolicy": [{"round_robin": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.subsetSize", "0..=4294967295"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 3}})), "loadBalancingConfig[0].random_subsetting_experimental.childPolicy", "required"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 3, "childPolicy": [{"x": {}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.childPolicy", "no supported policy in [x]"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": {"subsetSize": 3, "childPolicy": [{"least_request": {"choiceCount": 1}}]}})), "loadBalancingConfig[0].random_subsetting_experimental.childPolicy[0].least_request.choiceCount", "must be > 1"),
        ("/loadBalancingConfig/0", Some(json!({"random_subsetting_experimental": []})), "loadBalancingConfig[0].random_subsetting_experimental", "object"),
        ("/methodConfig/2/timeout", Some(json!(1.5)), "methodConfig[2].timeout", "string"),
        ("/methodConfig/2/maxRequestMessageBytes", Some(json!(-1)), "methodConfig[2].maxRequestMessageBytes", "non-negative"),
        ("/methodConfig/2/maxRequestMessageBytes", Some(json!("1.5")), "methodConfig[2].maxRequestMessageBytes", "non-negative"),
        ("/methodConfig/2/maxResponseMessageBytes", Some(json!("")), "methodConfig[2].maxResponseMessageBytes", "non-negative"),
        ("/methodConfig/2/maxResponseMessageBytes", Some(json!(true)), "methodConfig[2].maxResponseMessageBytes", "got a boolean"),
        ("/methodConfig/2/name", Some(json!({})), "methodConfig[2].name", "array"),
        ("/methodConfig/2/name/0", Some(json!("pkg.Svc")), "methodConfig[2].name[0]", "object"),
        ("/methodConfig/2/name/0", Some(json!({"method": "Get"})), "methodConfig[2].name[0]", "service"),
        ("/methodConfig/2/name/0", Some(json!({"service": "", "method": "Get"})), "methodConfig[2].name[0]", "service"),
        ("/methodConfig/2/name/0", Some(json!({"service": "pkg Svc"})), "methodConfig[2].name[0]", "invalid method name"),
        ("/methodConfig/2/name/0", Some(json!({"service": 3})), "methodConfig[2].name[0].service", "string"),
        ("/methodConfig/2/name/0", Some(json!({"service": "pkg.Svc"})), "methodConfig[2].name[0]", "also at methodConfig[1].name[0]"),
        ("/methodConfig/1/name/0", Some(json!({"service": ""})), "methodConfig[1].name[0]", "also at methodConfig[0].name[0]"),
        ("/methodConfig", Some(json!({})), "methodConfig", "array"),
        ("/methodConfig/0", Some(json!([])), "methodConfig[0]", "object"),
        ("/loadBalancingConfig", Some(json!({})), "loadBalancingConfig", "array"),
        ("/loadBalancingConfig", Some(json!([{"grpclb": {}}])), "loadBalancingConfig", "no supported policy in [grpclb]"),
        ("/loadBalancingConfig", Some(json!([])), "loadBalancingConfig", "no supported policy"),
        ("/loadBalancingConfig/0", Some(json!("round_robin")), "loadBalancingConfig[0]", "object"),
        ("/loadBalancingConfig/0", Some(json!({"a": {}, "round_robin": {}})), "loadBalancingConfig[0]", "exactly one key"),
        ("/loadBalancingConfig/0", Some(json!({})), "loadBalancingConfig[0]", "exactly one key"),
        ("/loadBalancingConfig/1/least_request/choiceCount", Some(json!(1)), "loadBalancingConfig[1].least_request.choiceCount", "must be > 1, got 1"),
        ("/loadBalancingConfig/1/least_request/choiceCount", Some(json!("3")), "loadBalancingConfig[1].least_request.choiceCount", "integer"),
        ("/loadBalancingConfig/1", Some(json!({"peak_ewma": {"decay": "0s"}})), "loadBalancingConfig[1].peak_ewma.decay", "> 0s"),
        ("/loadBalancingConfig/1", Some(json!({"peak_ewma": {"defaultRtt": "x"}})), "loadBalancingConfig[1].peak_ewma.defaultRtt", "duration"),
        ("/loadBalancingConfig/1", Some(json!({"round_robin": []})), "loadBalancingConfig[1].round_robin", "object"),
        ("/retryThrottling/maxTokens", Some(json!(0)), "retryThrottling.maxTokens", "(0, 1000]"),
        ("/retryThrottling/maxTokens", Some(json!(1000.5)), "retryThrottling.maxTokens", "(0, 1000]"),
        ("/retryThrottling/maxTokens", None, "retryThrottling.maxTokens", "required"),
        ("/retryThrottling/tokenRatio", Some(json!(0)), "retryThrottling.tokenRatio", "> 0"),
        ("/retryThrottling/tokenRatio", Some(json!("0.1")), "retryThrottling.tokenRatio", "number"),
        ("/healthCheckConfig/serviceName", Some(json!(1)), "healthCheckConfig.serviceName", "string"),
        ("/healthCheckConfig", Some(json!("svc")), "healthCheckConfig", "object"),
    ];
    for (at, to, path, reason) in cases {
        let json = with(at, to.clone());
        let error = ServiceConfig::from_json(&json).expect_err(&format!("{at} = {to:?} accepted"));
        assert_eq!(error.path(), path, "{at} = {to:?}: {error}");
        assert!(error.reason().contains(reason), "{at} = {to:?}: {error}");
        assert_eq!(error.to_string(), format!("{path}: {}", error.reason()));
    }
}

#[test]
fn whole_document_errors() {
    let error = ServiceConfig::from_json("{\n  \"methodConfig\": [,]\n}").unwrap_err();
    assert_eq!(error.path(), "");
    assert!(
        error
            .to_string()
            .starts_with("invalid JSON at line 2 column 20: "),
        "{error}"
    );
    for bad in ["", "  ", "{", "{} x", "[]", "null", "\"{}\"", "1"] {
        let error = ServiceConfig::from_json(bad).unwrap_err();
        assert_eq!(error.path(), "", "{bad:?}");
    }
    assert_eq!(ServiceConfig::from_json("{}"), Ok(ServiceConfig::default()));
}

/// Adds an unknown field to every object, except the single-key policy entries.
fn add_unknown_fields(value: &mut Value, in_lb_list: bool) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                add_unknown_fields(field, key == "loadBalancingConfig");
            }
            if !in_lb_list {
                fields.insert(
                    "someFutureField".into(),
                    json!({"timeout": -1, "a": [null]}),
                );
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| add_unknown_fields(v, in_lb_list)),
        _ => {}
    }
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let mut config = valid();
    add_unknown_fields(&mut config, false);
    assert!(
        config
            .pointer("/methodConfig/1/retryPolicy/someFutureField")
            .is_some()
    );
    assert_eq!(
        ServiceConfig::from_json(&config.to_string()),
        Ok(expected())
    );

    let pick_first =
        r#"{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true, "x": 1}}]}"#;
    let config = ServiceConfig::from_json(pick_first).unwrap();
    assert_eq!(
        config.load_balancing,
        Some(LoadBalancingConfig::PickFirst {
            shuffle_address_list: true
        })
    );
}

#[test]
fn counts_above_the_limit_are_clamped() {
    let retry = parse_with("/methodConfig/1/retryPolicy/maxAttempts", Some(json!(7))).unwrap();
    let retry = retry.method_configs[1].retry_policy.clone().unwrap();
    assert_eq!(retry.max_attempts, 5);
    let huge = Some(json!(u64::MAX));
    let hedge = parse_with("/methodConfig/2/hedgingPolicy/maxAttempts", huge).unwrap();
    let hedge = hedge.method_configs[2].hedging_policy.clone().unwrap();
    assert_eq!(hedge.max_attempts, 5);

    let lb = |choice: Value| {
        let json = json!({"loadBalancingConfig": [{"least_request": choice}]});
        ServiceConfig::from_json(&json.to_string()).map(|c| c.load_balancing)
    };
    let least_request = |choice_count| Ok(Some(LoadBalancingConfig::LeastRequest { choice_count }));
    assert_eq!(lb(json!({"choiceCount": 50})), least_request(10));
    assert_eq!(lb(json!({})), least_request(2));
    let error = lb(json!({"choiceCount": 1})).unwrap_err().to_string();
    assert_eq!(
        error,
        "loadBalancingConfig[0].least_request.choiceCount: must be > 1, got 1"
    );
}

#[test]
fn status_codes_by_upper_case_name_or_number() {
    let names = "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS \
        PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE \
        UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED";
    let codes = |list: Value| {
        let config = parse_with(
            "/methodConfig/1/retryPolicy/retryableStatusCodes",
            Some(list),
        )?;
        Ok::<_, InvalidConfig>(
            config.method_configs[1]
                .retry_policy
                .clone()
                .unwrap()
                .retryable_status_codes,
        )
    };
    let all: Vec<Code> = (0..=16).map(Code::from_i32).collect();
    assert_eq!(
        codes(json!(names.split_whitespace().collect::<Vec<_>>())),
        Ok(all.clone())
    );
    assert_eq!(codes(json!((0..=16).collect::<Vec<_>>())), Ok(all));
    for bad in [
        json!("unavailable"),
        json!(-1),
        json!(1.0),
        json!(null),
        json!("OK "),
    ] {
        assert!(codes(json!([bad])).is_err(), "{bad} accepted");
    }
}

#[test]
fn first_known_policy_wins() {
    let lb = |list: Value| {
        ServiceConfig::from_json(&json!({"loadBalancingConfig": list}).to_string())
            .map(|c| c.load_balancing)
    };
    let entries = json!([{"xds": {}}, {"round_robin": {}}, {"pick_first": {}}]);
    assert_eq!(lb(entries), Ok(Some(LoadBalancingConfig::RoundRobin)));
    // Entries after the chosen one are not examined.
    assert_eq!(
        lb(json!([{"pick_first": {}}, "junk"])),
        Ok(Some(LoadBalancingConfig::PickFirst {
            shuffle_address_list: false
        }))
    );
    let ewma = json!([{"peak_ewma": {"decay": "10s", "defaultRtt": "0s"}}]);
    let expected = LoadBalancingConfig::PeakEwma {
        decay: Some(Duration::from_secs(10)),
        default_rtt: Some(Duration::ZERO),
    };
    assert_eq!(lb(ewma), Ok(Some(expected)));
    assert!(lb(json!([{"xds": {}}, {"grpclb": {}}])).is_err());
}

#[test]
fn validates_configs_built_in_rust() {
    let path_of = |config: &ServiceConfig| config.validate().unwrap_err().path().to_owned();
    let mut config = expected();
    config.method_configs[1]
        .retry_policy
        .as_mut()
        .unwrap()
        .max_attempts = 7;
    assert_eq!(path_of(&config), "methodConfig[1].retryPolicy.maxAttempts");

    let mut config = expected();
    config.method_configs[1]
        .retry_policy
        .as_mut()
        .unwrap()
        .backoff_multiplier = f64::NAN;
    assert_eq!(
        path_of(&config),
        "methodConfig[1].retryPolicy.backoffMultiplier"
    );

    let mut config = expected();
    config.method_configs[2].names.push(MethodPattern {
        service: None,
        method: Some("Get".into()),
    });
    assert_eq!(path_of(&config), "methodConfig[2].name[1]");

    let mut config = expected();
    config.load_balancing = Some(LoadBalancingConfig::LeastRequest { choice_count: 11 });
    assert_eq!(
        path_of(&config),
        "loadBalancingConfig[0].least_request.choiceCount"
    );

    let mut config = expected();
    config.retry_throttling = Some(RetryThrottling::new(f64::NAN, 0.1));
    assert_eq!(path_of(&config), "retryThrottling.maxTokens");
}

#[test]
fn durations() {
    for (text, expected) in [
        ("1s", Duration::from_secs(1)),
        ("0s", Duration::ZERO),
        ("0.1s", Duration::from_millis(100)),
        ("1.500s", Duration::from_millis(1500)),
        // Forms grpc-go accepts beyond proto3's.
        ("1.s", Duration::from_secs(1)),
        (".5s", Duration::from_millis(500)),
        (".050s", Duration::from_millis(50)),
        ("+1.5s", Duration::from_millis(1500)),
        ("+.5s", Duration::from_millis(500)),
        ("0.000000001s", Duration::from_nanos(1)),
        ("315576000000s", Duration::from_secs(315_576_000_000)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    for bad in [
        "",
        "s",
        "1",
        "-1s",
        "-0s",
        "1e3s",
        ".s",
        "+s",
        "++1s",
        "+-1s",
        "1.+5s",
        "1.-5s",
        "5.3.2s",
        "3.1234567890s",
        "1E3s",
        "1.0000000001s",
        " 1s",
        "1s ",
        "1.5S",
        "1,5s",
        "0x1s",
        "315576000001s",
        "99999999999999999999999s",
        "1.5ms",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

/// Small JSON trees built from the config's own keys and values, to reach deep code.
fn json_value() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "loadBalancingConfig",
        "methodConfig",
        "retryThrottling",
        "healthCheckConfig",
        "name",
        "service",
        "method",
        "waitForReady",
        "timeout",
        "maxRequestMessageBytes",
        "retryPolicy",
        "hedgingPolicy",
        "maxAttempts",
        "initialBackoff",
        "maxBackoff",
        "backoffMultiplier",
        "retryableStatusCodes",
        "hedgingDelay",
        "nonFatalStatusCodes",
        "maxTokens",
        "tokenRatio",
        "serviceName",
        "round_robin",
        "least_request",
        "choiceCount",
        "peak_ewma",
        "decay",
        "pick_first",
        "x",
    ];
    const STRINGS: &[&str] = &[
        "",
        "1s",
        "0s",
        "-1s",
        "0.5s",
        "1.0000000001s",
        "UNAVAILABLE",
        "unavailable",
        "pkg.Svc",
        "Get",
        "a/b",
        "18446744073709551616",
        "12",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..20).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Parses `json`; whatever parses must also pass `validate`.
fn check(json: &str) {
    match ServiceConfig::from_json(json) {
        Ok(config) => assert_eq!(config.validate(), Ok(()), "{json}"),
        Err(error) => assert!(!error.reason().is_empty()),
    }
}

fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => fields
            .iter()
            .for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    for depth in [200, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        check(&nested);
        check(&format!(r#"{{"methodConfig": {nested}}}"#));
        let objects = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        check(&objects);
    }
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // What a config file with any bytes in it reads as.
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn never_panics_on_strings(s in ".*", t in "[\\[\\]{}\":,0-9a-zA-Z. _-]{0,60}") {
        check(&s);
        check(&t);
    }

    #[test]
    fn never_panics_on_json_trees(value in json_value()) {
        check(&value.to_string());
        check(&json!({"methodConfig": [value]}).to_string());
        check(&json!({"methodConfig": [{"name": [{}], "retryPolicy": value}]}).to_string());
        check(&json!({"loadBalancingConfig": [value]}).to_string());
    }

    #[test]
    fn never_panics_on_mutated_configs(pick in any::<prop::sample::Index>(), value in json_value()) {
        let mut all = Vec::new();
        pointers(&valid(), String::new(), &mut all);
        let at = pick.get(&all);
        let mut config = valid();
        if let Some(target) = config.pointer_mut(at) {
            *target = value;
        }
        check(&config.to_string());
    }
}

/// Keys match as Go's `encoding/json` matches them: exact first, else ignoring case.
#[test]
fn keys_match_ignoring_case_as_grpc_go_does() {
    // grpc-go's retry example (examples/features/retry), as it writes its keys.
    let json = r#"{"methodConfig": [{"name": [{"service": "grpc.examples.echo.Echo"}],
        "waitForReady": true,
        "retryPolicy": {"MaxAttempts": 4, "InitialBackoff": ".01s", "MaxBackoff": ".01s",
                        "BackoffMultiplier": 1.0, "RetryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let config = ServiceConfig::from_json(json).unwrap();
    let retry = config.method_configs[0].retry_policy.clone().unwrap();
    let ten_ms = Duration::from_millis(10);
    assert_eq!(
        retry,
        RetryPolicy::new(4, ten_ms, ten_ms, 1.0, vec![Code::Unavailable])
    );
    let shouting = r#"{"METHODCONFIG": [{"NAME": [{"SERVICE": "a.B", "Method": "C"}], "Timeout": "2s"}],
        "RetryThrottling": {"MAXTOKENS": 10, "tokenratio": 0.5},
        "healthcheckconfig": {"ServiceName": "svc"}}"#;
    let config = ServiceConfig::from_json(shouting).unwrap();
    assert_eq!(
        config.method_configs[0].names,
        [MethodPattern::method("a.B", "C")]
    );
    assert_eq!(
        config.method_configs[0].timeout,
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        config.retry_throttling,
        Some(RetryThrottling::new(10.0, 0.5))
    );
    assert_eq!(config.health_check, Some(HealthCheckConfig::new("svc")));
    // The exact key wins over another spelling.
    let both = r#"{"methodConfig": [{"name": [{}], "Timeout": "9s", "timeout": "1s"}]}"#;
    let config = ServiceConfig::from_json(both).unwrap();
    assert_eq!(
        config.method_configs[0].timeout,
        Some(Duration::from_secs(1))
    );
    // Policy names are map keys, exact in every gRPC.
    let upper = r#"{"loadBalancingConfig": [{"ROUND_ROBIN": {}}]}"#;
    assert!(ServiceConfig::from_json(upper).is_err());
}

#[test]
fn load_balancing_policy_counts_when_load_balancing_config_is_absent() {
    let lb = |json: Value| ServiceConfig::from_json(&json.to_string()).map(|c| c.load_balancing);
    let pick_first = LoadBalancingConfig::PickFirst {
        shuffle_address_list: false,
    };
    assert_eq!(
        lb(json!({"loadBalancingPolicy": "pick_first"})),
        Ok(Some(pick_first.clone()))
    );
    assert_eq!(
        lb(json!({"loadBalancingPolicy": "ROUND_ROBIN"})),
        Ok(Some(LoadBalancingConfig::RoundRobin))
    );
    assert_eq!(
        lb(json!({"loadBalancingPolicy": "least_request_experimental"})),
        Ok(Some(LoadBalancingConfig::LeastRequest { choice_count: 2 }))
    );
    // An unknown name is pick_first, as grpc-go has it.
    assert_eq!(
        lb(json!({"loadBalancingPolicy": "weighted_target_experimental"})),
        Ok(Some(pick_first))
    );
    // loadBalancingConfig wins.
    assert_eq!(
        lb(
            json!({"loadBalancingPolicy": "pick_first", "loadBalancingConfig": [{"round_robin": {}}]})
        ),
        Ok(Some(LoadBalancingConfig::RoundRobin))
    );
    // A policy that needs a config cannot be named alone.
    let error = lb(json!({"loadBalancingPolicy": "outlier_detection_experimental"})).unwrap_err();
    assert_eq!(error.path(), "loadBalancingPolicy.childPolicy");
    let error = lb(json!({"loadBalancingPolicy": 1})).unwrap_err();
    assert_eq!(error.path(), "loadBalancingPolicy");
    assert_eq!(lb(json!({})), Ok(None));
}

#[test]
fn outlier_detection_maps_a50_fields_and_its_child_picks() {
    let json = json!({"loadBalancingConfig": [{"outlier_detection_experimental": {
        "interval": "1s", "baseEjectionTime": "2s", "maxEjectionTime": "3s",
        "maxEjectionPercent": 50,
        "successRateEjection": {"stdevFactor": 1000, "requestVolume": 10},
        "childPolicy": [{"unknown": {}}, {"least_request_experimental": {"choiceCount": 3}}]
    }}]});
    let config = ServiceConfig::from_json(&json.to_string()).unwrap();
    let lb = config.load_balancing.unwrap();
    assert_eq!(lb.name(), "outlier_detection_experimental");
    assert_eq!(
        lb.picking_policy(),
        &LoadBalancingConfig::LeastRequest { choice_count: 3 }
    );
    let od = lb.outlier_detection().unwrap();
    assert_eq!(
        (
            od.interval,
            od.base_ejection_time,
            od.max_ejection_time,
            od.max_ejection_percent
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(3),
            50
        )
    );
    let sr = od.success_rate_ejection.clone().unwrap();
    assert_eq!(
        (
            sr.stdev_factor,
            sr.enforcement_percentage,
            sr.minimum_hosts,
            sr.request_volume
        ),
        (1000, 100, 5, 10)
    );
    // Absent in A50 means off.
    assert_eq!(od.failure_percentage_ejection, None);
    let defaults = json!({"loadBalancingConfig": [{"outlier_detection_experimental": {
        "childPolicy": [{"round_robin": {}}]}}]});
    let config = ServiceConfig::from_json(&defaults.to_string()).unwrap();
    let expected = OutlierDetectionConfig::new(LoadBalancingConfig::RoundRobin);
    assert_eq!(
        config.load_balancing.unwrap().outlier_detection(),
        Some(&expected)
    );
}

#[test]
fn random_subsetting_reads_a68_fields_and_its_child_picks() {
    let json = json!({"loadBalancingConfig": [
        {"unknown_policy": {}},
        {"random_subsetting_experimental": {
            "subsetSize": 10,
            "childPolicy": [{"x": {}}, {"round_robin": {}}, {"pick_first": {}}]
        }}
    ]});
    let config = ServiceConfig::from_json(&json.to_string()).unwrap();
    let lb = config.load_balancing.unwrap();
    assert_eq!(lb.name(), "random_subsetting_experimental");
    assert_eq!(lb.picking_policy(), &LoadBalancingConfig::RoundRobin);
    let expected = RandomSubsettingConfig::new(10, LoadBalancingConfig::RoundRobin);
    assert_eq!(lb.random_subsetting(), Some(&expected));
    assert_eq!(lb.outlier_detection(), None);
    // Keys match as grpc-go's encoding/json matches them: ignoring ASCII case.
    let json = json!({"loadBalancingConfig": [{"random_subsetting_experimental": {
        "SubsetSize": 4, "childpolicy": [{"pick_first": {"shuffleAddressList": true}}]}}]});
    let lb = ServiceConfig::from_json(&json.to_string())
        .unwrap()
        .load_balancing
        .unwrap();
    assert_eq!(lb.random_subsetting().map(|rs| rs.subset_size), Some(4));
    assert_eq!(
        lb.picking_policy(),
        &LoadBalancingConfig::PickFirst {
            shuffle_address_list: true
        }
    );
    // Nested either way with outlier detection, both are found.
    let json = json!({"loadBalancingConfig": [{"outlier_detection_experimental": {
        "childPolicy": [{"random_subsetting_experimental": {
            "subsetSize": 3, "childPolicy": [{"least_request_experimental": {}}]}}]}}]});
    let lb = ServiceConfig::from_json(&json.to_string())
        .unwrap()
        .load_balancing
        .unwrap();
    assert_eq!(lb.random_subsetting().map(|rs| rs.subset_size), Some(3));
    assert!(lb.outlier_detection().is_some());
    assert_eq!(
        lb.picking_policy(),
        &LoadBalancingConfig::LeastRequest { choice_count: 2 }
    );
    let json = json!({"loadBalancingConfig": [{"random_subsetting_experimental": {
        "subsetSize": 3, "childPolicy": [{"outlier_detection_experimental": {
            "childPolicy": [{"round_robin": {}}]}}]}}]});
    let lb = ServiceConfig::from_json(&json.to_string())
        .unwrap()
        .load_balancing
        .unwrap();
    assert_eq!(lb.random_subsetting().map(|rs| rs.subset_size), Some(3));
    assert!(lb.outlier_detection().is_some());
    // A config built in code is checked the same way.
    let config = ServiceConfig {
        load_balancing: Some(LoadBalancingConfig::RandomSubsetting(Box::new(
            RandomSubsettingConfig::new(0, LoadBalancingConfig::RoundRobin),
        ))),
        ..ServiceConfig::default()
    };
    let error = config.validate().unwrap_err();
    assert_eq!(
        error.path(),
        "loadBalancingConfig[0].random_subsetting_experimental.subsetSize"
    );
}

#[test]
fn retry_policy_wins_over_a_hedging_policy_beside_it() {
    let json = with(
        "/methodConfig/1/hedgingPolicy",
        Some(json!({"maxAttempts": 3, "hedgingDelay": "1s"})),
    );
    let config = ServiceConfig::from_json(&json).unwrap();
    assert!(config.method_configs[1].retry_policy.is_some());
    assert_eq!(config.method_configs[1].hedging_policy, None);
    // Built in Rust with both: valid, and calls see only the retry policy.
    let mut config = expected();
    config.method_configs[1].hedging_policy = Some(HedgingPolicy::new(3));
    assert_eq!(config.validate(), Ok(()));
    let method = config.method_map().get("/pkg.Svc/Put").clone().unwrap();
    assert!(method.retry_policy.is_some() && method.hedging_policy.is_none());
}

#[test]
fn zero_timeout_is_valid() {
    let config = parse_with("/methodConfig/2/timeout", Some(json!("0s"))).unwrap();
    assert_eq!(config.method_configs[2].timeout, Some(Duration::ZERO));
}

/// Configs from grpc-go's and C-core's examples and tests, with the verdict those give
/// (grpc-go's where the two differ, C-core's where grpc-go has no opinion).
#[test]
fn verdicts_on_grpc_go_and_c_core_configs() {
    const OK: bool = true;
    const REJECT: bool = false;
    let retry = |fields: &str| {
        format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "s"}}], "retryPolicy": {{{fields}}}}}]}}"#
        )
    };
    let good_retry = r#""maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]"#;
    let timeout = |t: &str| {
        format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "foo", "method": "Bar"}}], "timeout": "{t}"}}]}}"#
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, String, bool)> = vec![
        // grpc-go examples/features.
        ("go retry example", r#"{"methodConfig": [{"name": [{"service": "grpc.examples.echo.Echo"}], "waitForReady": true, "retryPolicy": {"MaxAttempts": 4, "InitialBackoff": ".01s", "MaxBackoff": ".01s", "BackoffMultiplier": 1.0, "RetryableStatusCodes": ["UNAVAILABLE"]}}]}"#.into(), OK),
        ("go load_balancing example", r#"{"loadBalancingConfig": [{"round_robin":{}}]}"#.into(), OK),
        ("go health example", r#"{"loadBalancingPolicy": "round_robin", "healthCheckConfig": {"serviceName": ""}}"#.into(), OK),
        ("go health, portable form", r#"{"loadBalancingConfig": [{"round_robin":{}}], "healthCheckConfig": {"serviceName": ""}}"#.into(), OK),
        ("portable policy list", r#"{"loadBalancingConfig": [{"peak_ewma":{}}, {"round_robin":{}}]}"#.into(), OK),
        ("go deprecated policy", r#"{"loadBalancingPolicy": "round_robin", "methodConfig": [{"name": [{"service": "foo", "method": "Bar"}], "waitForReady": true}]}"#.into(), OK),
        ("go policy not a string", r#"{"loadBalancingPolicy": 1, "methodConfig": [{"name": [{"service": "foo", "method": "Bar"}], "waitForReady": false}]}"#.into(), REJECT),
        ("go unknown policy name", r#"{"loadBalancingPolicy": "no_such_policy"}"#.into(), OK),
        ("go bad JSON", r#"{"methodConfig": [{"name": [{"service": "foo", "method": "Bar"}], "waitForReady": fall}]}"#.into(), REJECT),
        ("go timeout 1s", timeout("1s"), OK),
        ("go timeout 3c", timeout("3c"), REJECT),
        ("go timeout 0s", timeout("0s"), OK),
        ("go duration 1.s", timeout("1.s"), OK),
        ("go duration .002s", timeout(".002s"), OK),
        ("go duration +.5s", timeout("+.5s"), OK),
        ("go duration .s", timeout(".s"), REJECT),
        ("go duration 1 s", timeout("1 s"), REJECT),
        ("go duration 1ms", timeout("1ms"), REJECT),
        ("go duration 1.1.1s", timeout("1.1.1s"), REJECT),
        ("go duration 10 fraction digits", timeout(".0000000001s"), REJECT),
        ("go duration out of range", timeout("315576000001s"), REJECT),
        ("go message sizes", r#"{"methodConfig": [{"name": [{"service": "foo", "method": "Bar"}], "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": 2048}]}"#.into(), OK),
        ("go duplicate name", r#"{"methodConfig": [{"name": [{"service": "foo"}]}, {"name": [{"service": "foo"}]}]}"#.into(), REJECT),
        ("go method without service", r#"{"methodConfig": [{"name": [{"method": "Bar"}]}]}"#.into(), REJECT),
        ("go throttling maxTokens 0", r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 0.1}}"#.into(), REJECT),
        ("go throttling maxTokens 1001", r#"{"retryThrottling": {"maxTokens": 1001, "tokenRatio": 0.1}}"#.into(), REJECT),
        ("go throttling tokenRatio 0", r#"{"retryThrottling": {"maxTokens": 10, "tokenRatio": 0}}"#.into(), REJECT),
        ("go retry and hedging", format!(r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {{{good_retry}}}, "hedgingPolicy": {{"maxAttempts": 3}}}}]}}"#), OK),
        ("go least_request_experimental", r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 3}}]}"#.into(), OK),
        ("A48 choiceCount 1", r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 1}}]}"#.into(), REJECT),
        ("A48 choiceCount 11 clamps", r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 11}}]}"#.into(), OK),
        ("go outlier detection", r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {"interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s", "maxEjectionPercent": 10, "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100, "minimumHosts": 5, "requestVolume": 100}, "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 5, "minimumHosts": 5, "requestVolume": 50}, "childPolicy": [{"round_robin": {}}]}}]}"#.into(), OK),
        ("A50 maxEjectionPercent 150", r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {"maxEjectionPercent": 150, "childPolicy": [{"round_robin": {}}]}}]}"#.into(), REJECT),
        ("A50 enforcementPercentage 150", r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {"successRateEjection": {"enforcementPercentage": 150}, "childPolicy": [{"round_robin": {}}]}}]}"#.into(), REJECT),
        ("A62 shuffleAddressList", r#"{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}]}"#.into(), OK),
        ("A62 shuffleAddressList not bool", r#"{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": 1}}]}"#.into(), REJECT),
        // C-core's service config tests.
        ("core unknown policies skipped", r#"{"loadBalancingConfig": [{"unknown": {}}, {"grpclb": {}}, {"round_robin": {}}]}"#.into(), OK),
        ("core no known policy", r#"{"loadBalancingConfig": [{"unknown": {}}]}"#.into(), REJECT),
        ("core two policies in an entry", r#"{"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]}"#.into(), REJECT),
        ("core policy config not an object", r#"{"loadBalancingConfig": [{"round_robin": []}]}"#.into(), REJECT),
        ("core deprecated policy upper case", r#"{"loadBalancingPolicy": "PICK_FIRST"}"#.into(), OK),
        ("core retry ok", retry(good_retry), OK),
        ("core retry maxAttempts 1", retry(&good_retry.replace("\"maxAttempts\": 2", "\"maxAttempts\": 1")), REJECT),
        ("core retry no codes", retry(&good_retry.replace("[\"UNAVAILABLE\"]", "[]")), REJECT),
        ("core retry multiplier 0", retry(&good_retry.replace("\"backoffMultiplier\": 1", "\"backoffMultiplier\": 0")), REJECT),
        ("core retry initialBackoff 0s", retry(&good_retry.replace("\"initialBackoff\": \"1s\"", "\"initialBackoff\": \"0s\"")), REJECT),
        ("core hedging", r#"{"methodConfig": [{"name": [{"service": "s"}], "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "1s", "nonFatalStatusCodes": ["ABORTED"]}}]}"#.into(), OK),
        ("core health check", r#"{"healthCheckConfig": {"serviceName": "health_check_service_name"}}"#.into(), OK),
        ("core health check name not a string", r#"{"healthCheckConfig": {"serviceName": 1}}"#.into(), REJECT),
        ("core waitForReady not a bool", r#"{"methodConfig": [{"name": [{"service": "s"}], "waitForReady": "true"}]}"#.into(), REJECT),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(name, json, ok)| {
            let verdict = ServiceConfig::from_json(json);
            (verdict.is_ok() != *ok).then(|| format!("{name}: {verdict:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}
