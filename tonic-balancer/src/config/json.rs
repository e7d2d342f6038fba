//! Walking the JSON form of a service config into [`ServiceConfig`]: JSON types,
//! required fields, proto3 durations and status codes. Unknown fields are ignored, and
//! `null` counts as absent (proto3 JSON). Ranges are checked by `validate`.
//!
//! grpc-go is the reference users copy configs from, so keys are matched as Go's
//! `encoding/json` matches struct fields: the exact key first, else any key equal to it
//! ignoring ASCII case (grpc-go's own retry example writes `"MaxAttempts"`). Policy
//! names inside `loadBalancingConfig` are map keys in every gRPC and stay exact.

use std::time::Duration;

use crate::defaults::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_CHOICE_COUNT, DEFAULT_EJECTION_INTERVAL,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME, MAX_ATTEMPTS, MAX_CHOICE_COUNT,
};
use serde_json::{Map, Value};
use tonic::Code;

use super::service_config::{
    FailurePercentageEjectionConfig, HealthCheckConfig, HedgingPolicy, InvalidConfig,
    LoadBalancingConfig, MethodConfig, MethodPattern, OutlierDetectionConfig, Path,
    RandomSubsettingConfig, RetryPolicy, RetryThrottling, ServiceConfig, SuccessRateEjectionConfig,
};

/// The policy names this crate knows, as the error for a list with none of them says.
const SUPPORTED_POLICIES: &str = "pick_first, round_robin, least_request \
    (least_request_experimental), peak_ewma, outlier_detection_experimental, \
    random_subsetting_experimental";

type Result<T> = std::result::Result<T, InvalidConfig>;

/// The largest duration proto3 allows: 10,000 years.
pub(crate) const MAX_DURATION_SECONDS: u64 = 315_576_000_000;

/// Status code names, indexed by code number.
const CODE_NAMES: [(&str, Code); 17] = [
    ("OK", Code::Ok),
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

/// The name gRPC gives a status code (`UNAVAILABLE`): the one table of names.
pub(crate) fn code_name(code: Code) -> &'static str {
    CODE_NAMES
        .get(code as usize)
        .map_or("UNKNOWN", |(name, _)| name)
}

impl ServiceConfig {
    /// Parses a service config from its JSON form, as gRPC does (gRFC A21): unknown fields
    /// are ignored; invalid JSON, a wrong type or an invalid value in a known field
    /// rejects the whole config, with the path of the field.
    pub fn from_json(json: &str) -> Result<ServiceConfig> {
        let config = parse(json)?;
        config.validate()?;
        Ok(config)
    }
}

/// Parses the JSON form of a service config, without the range checks of `validate`
/// (except for the load balancing config, checked here at its real index).
fn parse(json: &str) -> Result<ServiceConfig> {
    let value: Value = serde_json::from_str(json).map_err(invalid_json)?;
    if !value.is_object() {
        let reason = format!(
            "a service config must be a JSON object, got {}",
            kind(&value)
        );
        return Err(Path::root().error(reason));
    }
    let root = Object::new(&value, &Path::root())?;
    // The deprecated `loadBalancingPolicy` counts only when `loadBalancingConfig` is
    // absent (grpc-go and C-core).
    let load_balancing = match root.optional("loadBalancingConfig", load_balancing)? {
        Some(lb) => Some(lb),
        None => root
            .optional("loadBalancingPolicy", deprecated_policy)?
            .flatten(),
    };
    Ok(ServiceConfig {
        load_balancing,
        method_configs: root
            .optional("methodConfig", |v, p| list(v, p, method_config))?
            .unwrap_or_default(),
        retry_throttling: root.optional("retryThrottling", retry_throttling)?,
        health_check: root.optional("healthCheckConfig", health_check)?,
        max_concurrent_requests: None,
        drop_overloads: Vec::new(),
    })
}

/// Parses a duration as grpc-go does: decimal seconds with an `s` suffix, such as `"1s"`,
/// `"0.1s"` or `"1.500s"`, and also the forms grpc-go accepts beyond proto3's: no whole
/// part (`".5s"`), no fractional digits (`"1.s"`) and a leading `+`. At most 9
/// fractional digits and 315,576,000,000 s (proto3's limit). Negative values are
/// rejected: no field of a service config means anything by them.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let invalid =
        || format!("invalid duration {s:?}: expected seconds with an 's' suffix, like \"1.5s\"");
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let number = s.strip_suffix('s').ok_or_else(invalid)?;
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || (whole.is_empty() && fraction.is_empty()) {
        return Err(invalid());
    }
    if fraction.len() > 9 {
        return Err(format!(
            "invalid duration {s:?}: at most 9 fractional digits"
        ));
    }
    let seconds = match whole {
        "" => 0,
        whole => whole
            .parse::<u64>()
            .ok()
            .filter(|&seconds| seconds <= MAX_DURATION_SECONDS)
            .ok_or_else(|| format!("invalid duration {s:?}: above {MAX_DURATION_SECONDS}s"))?,
    };
    let nanos = format!("{fraction:0<9}")
        .parse::<u32>()
        .map_err(|_| invalid())?;
    Ok(Duration::new(seconds, nanos))
}

fn invalid_json(error: serde_json::Error) -> InvalidConfig {
    let (line, column) = (error.line(), error.column());
    let message = error.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = message.strip_suffix(&suffix).unwrap_or(&message);
    Path::root().error(format!(
        "invalid JSON at line {line} column {column}: {message}"
    ))
}

/// A JSON object and its path, to read fields from.
struct Object<'a> {
    fields: &'a Map<String, Value>,
    path: Path,
}

impl<'a> Object<'a> {
    fn new(value: &'a Value, path: &Path) -> Result<Self> {
        match value {
            Value::Object(fields) => Ok(Self {
                fields,
                path: path.clone(),
            }),
            other => Err(wrong_type(other, path, "an object")),
        }
    }

    /// The field named `key` and its key as the document writes it: the exact key, else
    /// the first key (in sorted order) equal to it ignoring ASCII case, as Go's
    /// `encoding/json` matches struct fields.
    fn field(&self, key: &str) -> Option<(&'a str, &'a Value)> {
        if let Some((key, value)) = self.fields.get_key_value(key) {
            return Some((key, value));
        }
        self.fields
            .iter()
            .find(|(written, _)| written.eq_ignore_ascii_case(key))
            .map(|(written, value)| (written.as_str(), value))
    }

    /// A field parsed by `parse`, or `None` when it is absent or `null`.
    fn optional<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &Path) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.field(key) {
            None | Some((_, Value::Null)) => Ok(None),
            Some((written, value)) => parse(value, &self.path.key(written)).map(Some),
        }
    }

    fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &Path) -> Result<T>,
    ) -> Result<T> {
        self.optional(key, parse)?
            .ok_or_else(|| self.path.key(key).error("required field missing"))
    }
}

fn load_balancing(value: &Value, path: &Path) -> Result<LoadBalancingConfig> {
    let Value::Array(entries) = value else {
        return Err(wrong_type(value, path, "an array"));
    };
    let mut unknown = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = path.index(i);
        let policy = Object::new(entry, &here)?;
        let mut fields = policy.fields.iter();
        let (Some((name, config)), None) = (fields.next(), fields.next()) else {
            let count = policy.fields.len();
            return Err(here.error(format!(
                "must have exactly one key (the policy name), got {count}"
            )));
        };
        if let Some(lb) = lb_policy(name, config, &here.key(name))? {
            return Ok(lb);
        }
        unknown.push(name.as_str());
    }
    Err(path.error(format!(
        "no supported policy in [{}] (supported: {SUPPORTED_POLICIES})",
        unknown.join(", ")
    )))
}

/// `loadBalancingPolicy`: a policy name, matched ignoring case. An unknown name means
/// pick_first, as in grpc-go (C-core rejects the config); it is logged.
fn deprecated_policy(value: &Value, path: &Path) -> Result<Option<LoadBalancingConfig>> {
    let name = string(value, path)?.to_ascii_lowercase();
    let empty = Value::Object(Map::new());
    match lb_policy(&name, &empty, path)? {
        Some(lb) => Ok(Some(lb)),
        None => {
            tracing::warn!(
                policy = %name,
                "service config: loadBalancingPolicy names a policy this crate does not \
                 know; using pick_first, as grpc-go does"
            );
            Ok(Some(LoadBalancingConfig::PickFirst {
                shuffle_address_list: false,
            }))
        }
    }
}

/// The policy `name` with its `config`, or `None` when the policy is unknown.
fn lb_policy(name: &str, config: &Value, path: &Path) -> Result<Option<LoadBalancingConfig>> {
    let lb = match name {
        "pick_first" => {
            let config = Object::new(config, path)?;
            LoadBalancingConfig::PickFirst {
                shuffle_address_list: config
                    .optional("shuffleAddressList", boolean)?
                    .unwrap_or(false),
            }
        }
        "round_robin" => Object::new(config, path).map(|_| LoadBalancingConfig::RoundRobin)?,
        // grpc-go and grpc-java register least_request under its experimental name.
        "least_request" | "least_request_experimental" => {
            let config = Object::new(config, path)?;
            let count =
                config.optional("choiceCount", |v, p| count(v, p, MAX_CHOICE_COUNT as u32))?;
            let choice_count = count.map_or(DEFAULT_CHOICE_COUNT, |n| {
                usize::try_from(n).unwrap_or(MAX_CHOICE_COUNT)
            });
            LoadBalancingConfig::LeastRequest { choice_count }
        }
        "peak_ewma" => {
            let config = Object::new(config, path)?;
            LoadBalancingConfig::PeakEwma {
                decay: config.optional("decay", duration)?,
                default_rtt: config.optional("defaultRtt", duration)?,
            }
        }
        "outlier_detection_experimental" => {
            LoadBalancingConfig::OutlierDetection(Box::new(outlier_detection(config, path)?))
        }
        "random_subsetting_experimental" => {
            LoadBalancingConfig::RandomSubsetting(Box::new(random_subsetting(config, path)?))
        }
        _ => return Ok(None),
    };
    lb.validate(path)?;
    Ok(Some(lb))
}

/// `outlier_detection_experimental` (gRFC A50 field names): an absent algorithm is off,
/// as in A50; `childPolicy` is required and picks as `loadBalancingConfig` does.
fn outlier_detection(value: &Value, path: &Path) -> Result<OutlierDetectionConfig> {
    let config = Object::new(value, path)?;
    let success_rate = |value: &Value, path: &Path| {
        let algorithm = Object::new(value, path)?;
        let defaults = SuccessRateEjectionConfig::default();
        Ok(SuccessRateEjectionConfig {
            stdev_factor: algorithm
                .optional("stdevFactor", uint32)?
                .unwrap_or(defaults.stdev_factor),
            enforcement_percentage: algorithm
                .optional("enforcementPercentage", uint32)?
                .unwrap_or(defaults.enforcement_percentage),
            minimum_hosts: algorithm
                .optional("minimumHosts", uint32)?
                .unwrap_or(defaults.minimum_hosts),
            request_volume: algorithm
                .optional("requestVolume", uint32)?
                .unwrap_or(defaults.request_volume),
        })
    };
    let failure_percentage = |value: &Value, path: &Path| {
        let algorithm = Object::new(value, path)?;
        let defaults = FailurePercentageEjectionConfig::default();
        Ok(FailurePercentageEjectionConfig {
            threshold: algorithm
                .optional("threshold", uint32)?
                .unwrap_or(defaults.threshold),
            enforcement_percentage: algorithm
                .optional("enforcementPercentage", uint32)?
                .unwrap_or(defaults.enforcement_percentage),
            minimum_hosts: algorithm
                .optional("minimumHosts", uint32)?
                .unwrap_or(defaults.minimum_hosts),
            request_volume: algorithm
                .optional("requestVolume", uint32)?
                .unwrap_or(defaults.request_volume),
        })
    };
    Ok(OutlierDetectionConfig {
        interval: config
            .optional("interval", duration)?
            .unwrap_or(DEFAULT_EJECTION_INTERVAL),
        base_ejection_time: config
            .optional("baseEjectionTime", duration)?
            .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
        max_ejection_time: config
            .optional("maxEjectionTime", duration)?
            .unwrap_or(DEFAULT_MAX_EJECTION_TIME),
        max_ejection_percent: config
            .optional("maxEjectionPercent", uint32)?
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        success_rate_ejection: config.optional("successRateEjection", success_rate)?,
        failure_percentage_ejection: config
            .optional("failurePercentageEjection", failure_percentage)?,
        child_policy: config.required("childPolicy", load_balancing)?,
    })
}

/// `random_subsetting_experimental` (gRFC A68), as grpc-go reads it: `subsetSize` a
/// uint32 above 0 and `childPolicy` both required; the child picks as
/// `loadBalancingConfig` does (its first supported entry).
fn random_subsetting(value: &Value, path: &Path) -> Result<RandomSubsettingConfig> {
    let config = Object::new(value, path)?;
    Ok(RandomSubsettingConfig {
        subset_size: config.required("subsetSize", uint32)?,
        child_policy: config.required("childPolicy", load_balancing)?,
    })
}

fn method_config(value: &Value, path: &Path) -> Result<MethodConfig> {
    let config = Object::new(value, path)?;
    let retry_policy = config.optional("retryPolicy", retry_policy)?;
    let mut hedging_policy = config.optional("hedgingPolicy", hedging_policy)?;
    if retry_policy.is_some() && hedging_policy.is_some() {
        // grpc-go reads no hedgingPolicy at all, so such a config retries there.
        tracing::warn!(
            method_config = %path,
            "service config: retryPolicy and hedgingPolicy in one method config; \
             using the retry policy, as grpc-go does"
        );
        hedging_policy = None;
    }
    Ok(MethodConfig {
        names: config
            .optional("name", |v, p| list(v, p, method_pattern))?
            .unwrap_or_default(),
        wait_for_ready: config.optional("waitForReady", boolean)?,
        timeout: config.optional("timeout", duration)?,
        max_request_message_bytes: config.optional("maxRequestMessageBytes", byte_count)?,
        max_response_message_bytes: config.optional("maxResponseMessageBytes", byte_count)?,
        retry_policy,
        hedging_policy,
    })
}

/// A name; an empty string is the same as no string, as in proto3.
fn method_pattern(value: &Value, path: &Path) -> Result<MethodPattern> {
    let name = Object::new(value, path)?;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(MethodPattern {
        service: name.optional("service", string)?.and_then(non_empty),
        method: name.optional("method", string)?.and_then(non_empty),
    })
}

fn retry_policy(value: &Value, path: &Path) -> Result<RetryPolicy> {
    let policy = Object::new(value, path)?;
    Ok(RetryPolicy {
        max_attempts: policy.required("maxAttempts", |v, p| count(v, p, MAX_ATTEMPTS))?,
        initial_backoff: policy.required("initialBackoff", duration)?,
        max_backoff: policy.required("maxBackoff", duration)?,
        backoff_multiplier: policy.required("backoffMultiplier", number)?,
        retryable_status_codes: policy
            .required("retryableStatusCodes", |v, p| list(v, p, status_code))?,
    })
}

fn hedging_policy(value: &Value, path: &Path) -> Result<HedgingPolicy> {
    let policy = Object::new(value, path)?;
    Ok(HedgingPolicy {
        max_attempts: policy.required("maxAttempts", |v, p| count(v, p, MAX_ATTEMPTS))?,
        hedging_delay: policy
            .optional("hedgingDelay", duration)?
            .unwrap_or_default(),
        non_fatal_status_codes: policy
            .optional("nonFatalStatusCodes", |v, p| list(v, p, status_code))?
            .unwrap_or_default(),
    })
}

fn retry_throttling(value: &Value, path: &Path) -> Result<RetryThrottling> {
    let throttling = Object::new(value, path)?;
    Ok(RetryThrottling {
        max_tokens: throttling.required("maxTokens", number)?,
        token_ratio: throttling.required("tokenRatio", number)?,
    })
}

fn health_check(value: &Value, path: &Path) -> Result<HealthCheckConfig> {
    let health = Object::new(value, path)?;
    let service_name = health.optional("serviceName", string)?.unwrap_or_default();
    Ok(HealthCheckConfig::new(service_name))
}

fn list<'a, T>(
    value: &'a Value,
    path: &Path,
    mut item: impl FnMut(&'a Value, &Path) -> Result<T>,
) -> Result<Vec<T>> {
    let Value::Array(items) = value else {
        return Err(wrong_type(value, path, "an array"));
    };
    let item = |(i, value)| item(value, &path.index(i));
    items.iter().enumerate().map(item).collect()
}

fn boolean(value: &Value, path: &Path) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| wrong_type(value, path, "a boolean"))
}

fn string<'a>(value: &'a Value, path: &Path) -> Result<&'a str> {
    value
        .as_str()
        .ok_or_else(|| wrong_type(value, path, "a string"))
}

fn number(value: &Value, path: &Path) -> Result<f64> {
    value
        .as_f64()
        .ok_or_else(|| wrong_type(value, path, "a number"))
}

fn duration(value: &Value, path: &Path) -> Result<Duration> {
    parse_duration(string(value, path)?).map_err(|reason| path.error(reason))
}

/// An integer count: below 2 is an error, above `limit` is treated as `limit` (gRPC's rule).
fn count(value: &Value, path: &Path, limit: u32) -> Result<u32> {
    let Value::Number(n) = value else {
        return Err(wrong_type(value, path, "an integer"));
    };
    match (n.as_u64(), n.as_i64()) {
        (Some(n), _) if n >= 2 => Ok(u32::try_from(n).map_or(limit, |n| n.min(limit))),
        (Some(_), _) | (None, Some(_)) => Err(path.error(format!("must be > 1, got {n}"))),
        (None, None) => Err(path.error(format!("must be an integer, got {n}"))),
    }
}

/// A proto3 `uint32`: a JSON integer in 0..=4294967295.
fn uint32(value: &Value, path: &Path) -> Result<u32> {
    let Value::Number(n) = value else {
        return Err(wrong_type(value, path, "a non-negative integer"));
    };
    n.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| path.error(format!("must be an integer in 0..=4294967295, got {n}")))
}

/// A non-negative integer, as a JSON number or a decimal string (proto3's 64-bit form).
fn byte_count(value: &Value, path: &Path) -> Result<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        Value::String(_) => None,
        other => return Err(wrong_type(other, path, "a non-negative integer")),
    };
    parsed.ok_or_else(|| path.error(format!("must be a non-negative integer, got {value}")))
}

/// A status code: its upper-case name (`"UNAVAILABLE"`) or its number (14).
fn status_code(value: &Value, path: &Path) -> Result<Code> {
    let found = match value {
        Value::String(name) => CODE_NAMES.iter().find(|(known, _)| known == name),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| CODE_NAMES.get(n)),
        other => return Err(wrong_type(other, path, "a status code name or number")),
    };
    found.map(|&(_, code)| code).ok_or_else(|| {
        path.error(format!(
            "unknown status code {value}: names must be upper case, like \"UNAVAILABLE\", \
             and numbers in 0..=16"
        ))
    })
}

fn wrong_type(value: &Value, path: &Path, expected: &str) -> InvalidConfig {
    path.error(format!("must be {expected}, got {}", kind(value)))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
