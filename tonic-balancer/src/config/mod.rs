//! Per-method configuration: method names and the "exact > service > default" lookup
//! gRPC uses for everything configured per method, and the gRPC service config (JSON) as
//! typed Rust: [`ServiceConfig`] (types and validation in `service_config.rs`, the JSON
//! walk in `json.rs`).

use std::collections::HashMap;
use std::fmt;

mod json;
mod service_config;
#[cfg(test)]
mod service_config_tests;

pub(crate) use json::code_name;
pub use service_config::{
    DropOverload, FailurePercentageEjectionConfig, HealthCheckConfig, HedgingPolicy, InvalidConfig,
    LoadBalancingConfig, LocalityWeight, LocalityWeightedConfig, MethodConfig, MethodPattern,
    OutlierDetectionConfig, RandomSubsettingConfig, RetryPolicy, RetryThrottling, ServiceConfig,
    SuccessRateEjectionConfig,
};

/// A method name as configuration writes it: a whole service (`pkg.Svc`) or one method
/// (`pkg.Svc/Method`, with or without a leading `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MethodName {
    pub(crate) service: String,
    pub(crate) method: Option<String>,
}

/// Why a method name is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid method name {name:?}: {reason}")]
pub(crate) struct InvalidMethodName {
    name: String,
    reason: &'static str,
}

impl MethodName {
    pub(crate) fn parse(name: &str) -> Result<Self, InvalidMethodName> {
        let path = name.strip_prefix('/');
        let (service, method) = match path.unwrap_or(name).split_once('/') {
            Some((service, method)) => (service, Some(method)),
            None if path.is_some() => {
                return Err(InvalidMethodName {
                    name: name.to_owned(),
                    reason: "a path (leading '/') must name a method: /pkg.Service/Method",
                });
            }
            None => (name, None),
        };
        Self::checked(name, service, method)
    }

    /// A name from its parts, as the service config writes it (`{"service": .., "method": ..}`),
    /// with the same rules as [`MethodName::parse`].
    pub(crate) fn from_parts(
        service: &str,
        method: Option<&str>,
    ) -> Result<Self, InvalidMethodName> {
        let name = match method {
            Some(method) => format!("{service}/{method}"),
            None => service.to_owned(),
        };
        Self::checked(&name, service, method)
    }

    fn checked(name: &str, service: &str, method: Option<&str>) -> Result<Self, InvalidMethodName> {
        let invalid = |reason| InvalidMethodName {
            name: name.to_owned(),
            reason,
        };
        if service.is_empty() {
            return Err(invalid(
                "no service name (expected pkg.Service or pkg.Service/Method)",
            ));
        }
        let valid = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !valid(service) {
            return Err(invalid(
                "the service name may hold only letters, digits, '_' and '.'",
            ));
        }
        match method {
            Some("") => Err(invalid("empty method name after '/'")),
            Some(m) if !valid(m) || m.contains('.') => Err(invalid(
                "the method name may hold only letters, digits and '_'",
            )),
            _ => Ok(Self {
                service: service.to_owned(),
                method: method.map(str::to_owned),
            }),
        }
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(method) => write!(f, "{}/{}", self.service, method),
            None => f.write_str(&self.service),
        }
    }
}

/// Values per method, looked up by a call's path (`/pkg.Svc/Method`): the exact method,
/// else its service, else the default.
#[derive(Clone, Debug)]
pub(crate) struct MethodMap<T> {
    default: T,
    /// Keyed by `pkg.Svc/Method`, without the leading slash, so a call's path minus its
    /// first byte is the key: no allocation per lookup.
    methods: HashMap<String, T>,
    services: HashMap<String, T>,
}

impl<T> MethodMap<T> {
    pub(crate) fn new(default: T) -> Self {
        Self {
            default,
            methods: HashMap::new(),
            services: HashMap::new(),
        }
    }

    /// Sets the value for a method or a whole service; returns the previous one.
    pub(crate) fn insert(&mut self, name: &MethodName, value: T) -> Option<T> {
        match &name.method {
            Some(_) => self.methods.insert(name.to_string(), value),
            None => self.services.insert(name.service.clone(), value),
        }
    }

    /// The same map with every value transformed.
    pub(crate) fn map<U>(self, mut f: impl FnMut(T) -> U) -> MethodMap<U> {
        MethodMap {
            default: f(self.default),
            methods: self.methods.into_iter().map(|(k, v)| (k, f(v))).collect(),
            services: self.services.into_iter().map(|(k, v)| (k, f(v))).collect(),
        }
    }

    /// Every value: the default first.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.default)
            .chain(self.methods.values())
            .chain(self.services.values())
    }

    /// The value for a call path such as `/pkg.Svc/Method`.
    pub(crate) fn get(&self, path: &str) -> &T {
        if self.methods.is_empty() && self.services.is_empty() {
            return &self.default;
        }
        let key = path.strip_prefix('/').unwrap_or(path);
        if let Some(value) = self.methods.get(key) {
            return value;
        }
        let service = key.rsplit_once('/').map_or(key, |(service, _)| service);
        self.services.get(service).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_and_method_names() {
        let m = MethodName::parse("/pkg.Svc/Get").unwrap();
        assert_eq!(
            (m.service.as_str(), m.method.as_deref()),
            ("pkg.Svc", Some("Get"))
        );
        assert_eq!(MethodName::parse("pkg.Svc/Get").unwrap(), m);
        let s = MethodName::parse("pkg.Svc").unwrap();
        assert_eq!(s.method, None);
        assert_eq!(MethodName::from_parts("pkg.Svc", Some("Get")).unwrap(), m);
        assert_eq!(MethodName::from_parts("pkg.Svc", None).unwrap(), s);
        for (service, method) in [
            ("", None),
            ("pkg.Svc", Some("")),
            ("a/b", None),
            ("pkg.Svc", Some("a/b")),
        ] {
            assert!(
                MethodName::from_parts(service, method).is_err(),
                "{service:?} {method:?}"
            );
        }
        for bad in [
            "",
            "/",
            "/Get",
            "pkg.Svc/",
            "pkg Svc",
            "pkg.Svc/a/b",
            "pkg.Svc/a.b",
        ] {
            assert!(MethodName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn exact_beats_service_beats_default() {
        let mut map = MethodMap::new("default");
        map.insert(&MethodName::parse("pkg.A").unwrap(), "service A");
        map.insert(&MethodName::parse("pkg.A/Exact").unwrap(), "exact");
        assert_eq!(*map.get("/pkg.A/Exact"), "exact");
        assert_eq!(*map.get("/pkg.A/Other"), "service A");
        assert_eq!(*map.get("/pkg.B/Exact"), "default");
        assert_eq!(*map.get("garbage"), "default");
        assert_eq!(map.values().count(), 3);
    }
}
