//! Which route a call takes (gRFC A28): a route's path, header and fraction matchers,
//! decoded from RDS and applied to a call's path and metadata.
//!
//! A route matches when all of its matchers do; the first route of the virtual host
//! that matches takes the call.

use std::borrow::Cow;

use envoy_types::pb::envoy::config::route::v3::{self as rds, header_matcher, route_match};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

/// What a route asks of a call. Decoded by [`route_match`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteMatch {
    pub(crate) path: PathMatch,
    /// `case_sensitive: false`: the path prefix or exact path matches in any case (a
    /// regex is matched as written).
    pub(crate) case_insensitive: bool,
    pub(crate) headers: Vec<HeaderMatcher>,
    /// `runtime_fraction.default_value` in parts per million: the share of calls the
    /// route is considered for (gRPC has no runtime, so the key is ignored).
    pub(crate) per_million: Option<u32>,
    /// The route has `query_parameters`: gRPC calls have none, so it never matches
    /// (the RDS decoder leaves such routes out before reading them, as gRPC does).
    pub(crate) query_parameters: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `safe_regex`, matched against the whole path.
    Regex(Pattern),
}

/// One header matcher: the header's value (all of its values joined by `,`) against
/// the rule, then inverted if `invert_match`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeaderMatcher {
    /// Lowercase, as HTTP/2 sends names.
    pub(crate) name: String,
    pub(crate) rule: HeaderRule,
    pub(crate) invert: bool,
    /// A missing header is matched as the empty string (`treat_missing_header_as_empty`).
    pub(crate) missing_is_empty: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum HeaderRule {
    /// Present (`true`) or absent (`false`).
    Present(bool),
    /// A base-10 integer in `[start, end)`.
    Range(i64, i64),
    Text(TextMatch),
}

/// A string matcher; with `ignore_case`, both sides are compared in lowercase (not a
/// regex, as Envoy says).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TextMatch {
    pub(crate) kind: TextKind,
    pub(crate) ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TextKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

/// An RE2 pattern (`safe_regex`), compiled to match a whole string.
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    source: String,
    compiled: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Compiles `regex` anchored at both ends; RE2's syntax is what the `regex` crate
    /// reads (no backreferences, no lookaround).
    pub(crate) fn new(regex: &str) -> Result<Self, String> {
        let compiled = regex::Regex::new(&format!("^(?:{regex})$"))
            .map_err(|e| format!("{regex:?} is not a valid RE2 regex: {e}"))?;
        Ok(Self {
            source: regex.to_owned(),
            compiled,
        })
    }

    fn from_proto(m: &RegexMatcher) -> Result<Self, String> {
        Self::new(&m.regex)
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        self.compiled.is_match(text)
    }
}

/// A route's `match` as gRFC A28 reads it. `Err` names the field at fault, under
/// `match.`.
pub(crate) fn route_match(m: &rds::RouteMatch) -> Result<RouteMatch, String> {
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(Pattern::from_proto(r).map_err(|e| format!("safe_regex.regex: {e}"))?)
        }
        Some(_) | None => return Err("no supported path specifier".into()),
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_matcher(h).map_err(|e| format!("headers[{i}].{e}"))?);
    }
    let per_million = match m
        .runtime_fraction
        .as_ref()
        .map(|f| f.default_value.as_ref())
    {
        None => None,
        // A fraction with no default value is 0 of a million, as gRPC reads it.
        Some(None) => Some(0),
        Some(Some(f)) => {
            // An unknown denominator counts as a million, as gRPC reads it.
            let scale = match DenominatorType::try_from(f.denominator) {
                Ok(DenominatorType::Hundred) => 10_000,
                Ok(DenominatorType::TenThousand) => 100,
                Ok(DenominatorType::Million) | Err(_) => 1,
            };
            // Above the denominator is the whole of it.
            Some(f.numerator.saturating_mul(scale).min(1_000_000))
        }
    };
    Ok(RouteMatch {
        path,
        case_insensitive: m.case_sensitive.as_ref().is_some_and(|c| !c.value),
        headers,
        per_million,
        query_parameters: !m.query_parameters.is_empty(),
    })
}

#[allow(deprecated)] // exact/regex/prefix/suffix/contains_match: still sent, still read.
fn header_matcher(h: &rds::HeaderMatcher) -> Result<HeaderMatcher, String> {
    use header_matcher::HeaderMatchSpecifier as S;
    let text = |kind| {
        HeaderRule::Text(TextMatch {
            kind,
            ignore_case: false,
        })
    };
    let rule = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => text(TextKind::Exact(s.clone())),
        Some(S::SafeRegexMatch(r)) => text(TextKind::Regex(
            Pattern::from_proto(r).map_err(|e| format!("safe_regex_match.regex: {e}"))?,
        )),
        Some(S::RangeMatch(r)) => HeaderRule::Range(r.start, r.end),
        Some(S::PresentMatch(p)) => HeaderRule::Present(*p),
        Some(S::PrefixMatch(s)) => text(TextKind::Prefix(non_empty(s, "prefix_match")?)),
        Some(S::SuffixMatch(s)) => text(TextKind::Suffix(non_empty(s, "suffix_match")?)),
        Some(S::ContainsMatch(s)) => text(TextKind::Contains(non_empty(s, "contains_match")?)),
        Some(S::StringMatch(m)) => {
            HeaderRule::Text(string_matcher(m).map_err(|e| format!("string_match.{e}"))?)
        }
        None => return Err("header_match_specifier: missing".into()),
    };
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        rule,
        invert: h.invert_match,
        missing_is_empty: h.treat_missing_header_as_empty,
    })
}

fn string_matcher(m: &StringMatcher) -> Result<TextMatch, String> {
    use string_matcher::MatchPattern as P;
    let kind = match &m.match_pattern {
        Some(P::Exact(s)) => TextKind::Exact(s.clone()),
        Some(P::Prefix(s)) => TextKind::Prefix(non_empty(s, "prefix")?),
        Some(P::Suffix(s)) => TextKind::Suffix(non_empty(s, "suffix")?),
        Some(P::Contains(s)) => TextKind::Contains(non_empty(s, "contains")?),
        Some(P::SafeRegex(r)) => {
            TextKind::Regex(Pattern::from_proto(r).map_err(|e| format!("safe_regex.regex: {e}"))?)
        }
        Some(P::Custom(_)) => return Err("custom: not supported".into()),
        None => return Err("match_pattern: missing".into()),
    };
    let ignore_case = m.ignore_case && !matches!(kind, TextKind::Regex(_));
    let kind = match kind {
        TextKind::Exact(s) if ignore_case => TextKind::Exact(s.to_lowercase()),
        TextKind::Prefix(s) if ignore_case => TextKind::Prefix(s.to_lowercase()),
        TextKind::Suffix(s) if ignore_case => TextKind::Suffix(s.to_lowercase()),
        TextKind::Contains(s) if ignore_case => TextKind::Contains(s.to_lowercase()),
        kind => kind,
    };
    Ok(TextMatch { kind, ignore_case })
}

/// A prefix, suffix or contained string, which Envoy requires to be non-empty.
fn non_empty(s: &str, field: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(format!("{field}: empty (use present_match)"));
    }
    Ok(s.to_owned())
}

impl RouteMatch {
    /// Whether a call to `path` with these `headers` takes the route. `draw` gives a
    /// uniform number in `0..1_000_000` for a route that takes a fraction of calls; it
    /// is called only when every other matcher matched.
    pub(crate) fn matches(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        draw: impl FnOnce() -> u32,
    ) -> bool {
        if self.query_parameters || !self.path_matches(path) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(headers)) {
            return false;
        }
        self.per_million.is_none_or(|share| draw() < share)
    }

    fn path_matches(&self, path: &str) -> bool {
        let fold = |s: &str, p: &str| {
            if self.case_insensitive {
                s.eq_ignore_ascii_case(p)
            } else {
                s == p
            }
        };
        match &self.path {
            PathMatch::Prefix(prefix) => path
                .get(..prefix.len())
                .is_some_and(|head| fold(head, prefix)),
            PathMatch::Exact(exact) => fold(path, exact),
            PathMatch::Regex(pattern) => pattern.is_match(path),
        }
    }

    /// Whether anything but the path decides (headers, a fraction, query parameters).
    pub(crate) fn conditional(&self) -> bool {
        !self.headers.is_empty() || self.per_million.is_some() || self.query_parameters
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        let value = header_value(headers, &self.name);
        let value = match value {
            None if self.missing_is_empty => Some(Cow::Borrowed("")),
            value => value,
        };
        let matched = match (&self.rule, value) {
            (HeaderRule::Present(want), value) => value.is_some() == *want,
            // An absent header matches no value rule, inverted or not (as in gRPC).
            (_, None) => return false,
            (HeaderRule::Range(start, end), Some(v)) => {
                v.parse::<i64>().is_ok_and(|n| (*start..*end).contains(&n))
            }
            (HeaderRule::Text(text), Some(v)) => text.matches(&v),
        };
        matched != self.invert
    }
}

impl TextMatch {
    fn matches(&self, value: &str) -> bool {
        let lowered;
        let value = if self.ignore_case {
            lowered = value.to_lowercase();
            lowered.as_str()
        } else {
            value
        };
        match &self.kind {
            TextKind::Exact(s) => value == s,
            TextKind::Prefix(s) => value.starts_with(s.as_str()),
            TextKind::Suffix(s) => value.ends_with(s.as_str()),
            TextKind::Contains(s) => value.contains(s.as_str()),
            TextKind::Regex(p) => p.is_match(value),
        }
    }
}

/// A header's values as one string joined by `,`, as gRPC matches them. Binary
/// metadata (`-bin`) is never matched on: it counts as absent, as in gRPC. A value that
/// is not visible ASCII also counts as absent.
/// A single value (the usual case) is borrowed, not copied.
fn header_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<Cow<'a, str>> {
    if name.is_empty() || name.ends_with("-bin") {
        return None;
    }
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?;
    let mut joined = Cow::Borrowed(first);
    for value in values {
        let joined = joined.to_mut();
        joined.push(',');
        joined.push_str(value.to_str().ok()?);
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, Int64Range};

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn prefix(p: &str) -> rds::RouteMatch {
        rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(p.into())),
            ..Default::default()
        }
    }

    #[allow(deprecated)]
    fn header(name: &str, spec: header_matcher::HeaderMatchSpecifier) -> rds::HeaderMatcher {
        rds::HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(spec),
            ..Default::default()
        }
    }

    fn never() -> u32 {
        panic!("no fraction to draw for")
    }

    #[test]
    fn paths_match_by_prefix_exact_path_or_whole_regex_and_case_when_asked() {
        let m = route_match(&prefix("/pkg.Svc/")).unwrap();
        assert!(m.matches("/pkg.Svc/Get", &headers(&[]), never));
        assert!(!m.matches("/pkg.Other/Get", &headers(&[]), never));
        assert!(!m.matches("/PKG.svc/Get", &headers(&[]), never));
        let mut insensitive = prefix("/pkg.Svc/");
        insensitive.case_sensitive =
            Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        let m = route_match(&insensitive).unwrap();
        assert!(m.matches("/PKG.svc/Get", &headers(&[]), never));
        assert!(!m.matches("/pkg", &headers(&[]), never));
        let exact = rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Path("/pkg.Svc/Get".into())),
            ..Default::default()
        };
        let m = route_match(&exact).unwrap();
        assert!(m.matches("/pkg.Svc/Get", &headers(&[]), never));
        assert!(!m.matches("/pkg.Svc/GetMore", &headers(&[]), never));
        let regex = rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/pkg\\.Svc/(Get|Put)".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let m = route_match(&regex).unwrap();
        assert!(m.matches("/pkg.Svc/Put", &headers(&[]), never));
        // The whole path, not a part of it.
        assert!(!m.matches("/pkg.Svc/Putter", &headers(&[]), never));
        let bad = rds::RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                regex: "(".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let e = route_match(&bad).unwrap_err();
        assert!(
            e.starts_with("safe_regex.regex: \"(\" is not a valid RE2 regex"),
            "{e}"
        );
    }

    #[test]
    #[allow(deprecated)]
    fn headers_match_on_their_joined_values_and_invert() {
        use header_matcher::HeaderMatchSpecifier as S;
        let check = |h: rds::HeaderMatcher, pairs: &[(&str, &str)]| {
            let mut m = prefix("/");
            m.headers.push(h);
            route_match(&m)
                .unwrap()
                .matches("/a.S/M", &headers(pairs), never)
        };
        let exact = header("x-env", S::ExactMatch("canary".into()));
        assert!(check(exact.clone(), &[("x-env", "canary")]));
        assert!(!check(exact.clone(), &[("x-env", "prod")]));
        assert!(!check(exact.clone(), &[]));
        // Two values are matched as "a,b".
        let joined = header("x-env", S::ExactMatch("a,b".into()));
        assert!(check(joined, &[("x-env", "a"), ("x-env", "b")]));
        let mut inverted = exact.clone();
        inverted.invert_match = true;
        assert!(!check(inverted.clone(), &[("x-env", "canary")]));
        // An absent header matches no value rule, inverted or not.
        assert!(!check(inverted, &[]));
        let range = header("x-shard", S::RangeMatch(Int64Range { start: 10, end: 20 }));
        assert!(check(range.clone(), &[("x-shard", "10")]));
        assert!(!check(range.clone(), &[("x-shard", "20")]));
        assert!(!check(range, &[("x-shard", "ten")]));
        let present = header("x-debug", S::PresentMatch(true));
        assert!(check(present.clone(), &[("x-debug", "")]));
        assert!(!check(present, &[]));
        let absent = header("x-debug", S::PresentMatch(false));
        assert!(check(absent, &[]));
        let string = |pattern, ignore_case| {
            header(
                "x-user",
                S::StringMatch(StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case,
                }),
            )
        };
        use string_matcher::MatchPattern as P;
        assert!(check(
            string(P::Prefix("Ad".into()), false),
            &[("x-user", "Admin")]
        ));
        assert!(!check(
            string(P::Prefix("ad".into()), false),
            &[("x-user", "Admin")]
        ));
        assert!(check(
            string(P::Prefix("ad".into()), true),
            &[("x-user", "ADMIN")]
        ));
        assert!(check(
            string(P::Suffix("MIN".into()), true),
            &[("x-user", "admin")]
        ));
        assert!(check(
            string(P::Contains("dmi".into()), false),
            &[("x-user", "admin")]
        ));
        let regex = P::SafeRegex(RegexMatcher {
            regex: "[a-z]+-[0-9]+".into(),
            ..Default::default()
        });
        assert!(check(string(regex.clone(), false), &[("x-user", "bob-7")]));
        assert!(!check(string(regex, false), &[("x-user", "bob-7x")]));
        // Binary metadata is never matched: it counts as absent.
        let bin = header("x-token-bin", S::PresentMatch(true));
        assert!(!check(bin, &[("x-token-bin", "AAEC")]));
        // A missing header taken as empty.
        let mut empty = header("x-tag", S::ExactMatch(String::new()));
        assert!(!check(empty.clone(), &[]));
        empty.treat_missing_header_as_empty = true;
        assert!(check(empty, &[]));
    }

    #[test]
    fn a_fraction_is_drawn_only_once_the_rest_matched_and_query_parameters_never_match() {
        let mut m = prefix("/a.S/");
        m.runtime_fraction = Some(
            envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 25,
                    denominator: DenominatorType::Hundred as i32,
                }),
                runtime_key: "ignored".into(),
            },
        );
        let fraction = route_match(&m).unwrap();
        assert_eq!(fraction.per_million, Some(250_000));
        assert!(fraction.matches("/a.S/M", &headers(&[]), || 249_999));
        assert!(!fraction.matches("/a.S/M", &headers(&[]), || 250_000));
        assert!(!fraction.matches("/b.S/M", &headers(&[]), never));
        // No default value: 0 of a million.
        m.runtime_fraction.as_mut().unwrap().default_value = None;
        let none = route_match(&m).unwrap();
        assert!(!none.matches("/a.S/M", &headers(&[]), || 0));
        let mut query = prefix("/");
        query
            .query_parameters
            .push(rds::QueryParameterMatcher::default());
        assert!(
            !route_match(&query)
                .unwrap()
                .matches("/a.S/M", &headers(&[]), never)
        );
    }

    #[test]
    #[allow(deprecated)]
    fn matcher_errors_name_the_field() {
        let mut m = prefix("/");
        m.headers.push(rds::HeaderMatcher {
            name: "x".into(),
            ..Default::default()
        });
        assert_eq!(
            route_match(&m).unwrap_err(),
            "headers[0].header_match_specifier: missing"
        );
        let mut m = prefix("/");
        m.headers.push(header(
            "x",
            header_matcher::HeaderMatchSpecifier::PrefixMatch(String::new()),
        ));
        assert_eq!(
            route_match(&m).unwrap_err(),
            "headers[0].prefix_match: empty (use present_match)"
        );
        let mut m = prefix("/");
        m.headers.push(header(
            "x",
            header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher::default()),
        ));
        assert_eq!(
            route_match(&m).unwrap_err(),
            "headers[0].string_match.match_pattern: missing"
        );
    }
}
