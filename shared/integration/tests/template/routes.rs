//! The HTTP API: its routes to the functions, who may invoke them, and its throttling.

use std::collections::{BTreeMap, BTreeSet};

use agentidp_http::ROUTES;
use serde_yaml_ng::Value;

use crate::support::{
    binary_of, functions_by_binary, get, of_type, reference, resources, tagged, template, text,
};

/// How an integration of the API names the function it invokes: the ARN of a function of this
/// account and region by its name.
const FUNCTION_INVOCATION: (&str, &str) = (
    "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:",
    "/invocations",
);

/// The HTTP API: the template's one `AWS::Serverless::HttpApi`, `sam local start-api` serves it.
fn http_api(template: &Value) -> &Value {
    let apis = of_type(template, "AWS::Serverless::HttpApi");
    assert_eq!(apis.len(), 1, "one HTTP API");
    assert_eq!(apis[0].0, "HttpApi");
    apis[0].1
}

/// The API's routes (`METHOD /path`, and `$default` for what none matches) and the logical id
/// of the function each invokes, from its OpenAPI definition.
fn routes(template: &Value) -> BTreeMap<String, String> {
    let by_name: BTreeMap<String, String> = of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .filter_map(|(logical, function)| {
            let name = get(function, &["Properties", "FunctionName"])?;
            let (tag, name) = tagged(name).unwrap();
            assert_eq!(tag, "Sub", "{logical}: FunctionName");
            Some((text(name).to_owned(), logical))
        })
        .collect();
    let paths = get(
        http_api(template),
        &["Properties", "DefinitionBody", "paths"],
    )
    .and_then(Value::as_mapping)
    .expect("the API's definition has paths");
    let mut routed = BTreeMap::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_mapping().unwrap() {
            let key = match (text(path), text(method)) {
                ("$default", "x-amazon-apigateway-any-method") => "$default".to_owned(),
                (path, method) => format!("{} {path}", method.to_uppercase()),
            };
            let integration = operation
                .get("x-amazon-apigateway-integration")
                .unwrap_or_else(|| panic!("{key}: no integration"));
            assert_eq!(integration["type"].as_str(), Some("aws_proxy"), "{key}");
            // Lambda's Invoke API is a POST, whatever the route's method.
            assert_eq!(integration["httpMethod"].as_str(), Some("POST"), "{key}");
            assert_eq!(
                integration["payloadFormatVersion"].as_str(),
                Some("2.0"),
                "{key}: the functions read payload format 2.0"
            );
            let (tag, uri) = tagged(&integration["uri"]).unwrap();
            assert_eq!(tag, "Sub", "{key}: uri");
            let name = text(uri)
                .strip_prefix(FUNCTION_INVOCATION.0)
                .and_then(|rest| rest.strip_suffix(FUNCTION_INVOCATION.1))
                .unwrap_or_else(|| {
                    panic!("{key}: {uri:?} invokes no function of this stack's account and region")
                });
            let function = by_name
                .get(name)
                .unwrap_or_else(|| panic!("{key}: no function of the template is named {name}"));
            assert!(
                routed.insert(key.clone(), function.clone()).is_none(),
                "{key} routed twice"
            );
        }
    }
    routed
}

#[test]
fn every_route_is_routed_to_its_groups_function_and_nothing_else_is() {
    let template = template();
    let functions = functions_by_binary(&template);
    // Nothing routes but the API's definition: no plain API Gateway resource (which `sam local`
    // would not serve) and no function event (SAM would make an API of its own for it).
    for (name, resource) in resources(&template) {
        let kind = resource
            .get("Type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(!kind.starts_with("AWS::ApiGateway"), "{name}: {kind}");
    }
    for (name, function) in of_type(&template, "AWS::Serverless::Function") {
        assert!(
            get(function, &["Properties", "Events"]).is_none(),
            "{name}: Events"
        );
    }
    let mut expected = BTreeMap::new();
    for &(method, template_path, _, group) in ROUTES {
        let function = functions
            .get(&binary_of(group))
            .unwrap_or_else(|| panic!("no function runs {}", binary_of(group)));
        expected.insert(format!("{method} {template_path}"), function.clone());
    }
    // What no route matches gets the router's documented 404 or 405 from the function with the
    // least access, rather than API Gateway's own body.
    expected.insert("$default".to_owned(), functions["agentidp-audit"].clone());
    assert_eq!(
        routes(&template),
        expected,
        "template routes (left) vs ROUTES (right)"
    );
}

#[test]
fn api_gateway_may_invoke_each_routed_function_only_through_this_api() {
    let template = template();
    let routed: BTreeSet<String> = routes(&template).into_values().collect();
    let mut permitted = BTreeSet::new();
    for (name, permission) in of_type(&template, "AWS::Lambda::Permission") {
        let p = permission.get("Properties").unwrap();
        if p["Principal"].as_str() != Some("apigateway.amazonaws.com") {
            continue;
        }
        assert_eq!(
            p["Action"].as_str(),
            Some("lambda:InvokeFunction"),
            "{name}"
        );
        // Any route and stage of this API, and nothing else: no other API, no other account.
        let (tag, source) = tagged(&p["SourceArn"]).unwrap_or_else(|| panic!("{name}: SourceArn"));
        assert_eq!(
            (tag.as_str(), text(source)),
            (
                "Sub",
                "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"
            ),
            "{name}"
        );
        let function = reference(&p["FunctionName"]).0;
        assert!(
            permitted.insert(function.clone()),
            "{function}: two permissions"
        );
    }
    assert_eq!(
        permitted, routed,
        "functions API Gateway may invoke (left) vs routed (right)"
    );
}

#[test]
fn the_api_is_an_http_api_whose_only_stage_throttles_the_token_endpoint_harder() {
    let template = template();
    let api = http_api(&template).get("Properties").unwrap();
    assert!(api.get("CorsConfiguration").is_none());
    // lambda_http puts a named stage in front of every path, which no route would match.
    assert_eq!(
        api.get("StageName").and_then(Value::as_str),
        Some("$default")
    );
    assert!(get(api, &["DefaultRouteSettings", "ThrottlingRateLimit"]).is_some());
    let token = get(api, &["RouteSettings", "POST /api/v1/token"]).unwrap();
    assert_eq!(
        reference(token.get("ThrottlingRateLimit").unwrap()).0,
        "TokenThrottleRate"
    );
    assert_eq!(
        reference(get(api, &["AccessLogSettings", "DestinationArn"]).unwrap()).0,
        "ApiAccessLogGroup"
    );
    assert!(
        ROUTES
            .iter()
            .any(|(m, p, _, _)| format!("{m} {p}") == "POST /api/v1/token")
    );
}

#[test]
fn the_introspection_and_revocation_routes_have_the_token_routes_throttling() {
    let template = template();
    let settings = get(http_api(&template), &["Properties", "RouteSettings"]).unwrap();
    let routes = routes(&template);
    // Each authenticates a client as the token route does (a bcrypt verification for a secret
    // the instance has not seen), so each gets the token route's tighter limits.
    for key in [
        "POST /api/v1/token",
        "POST /api/v1/token/introspect",
        "POST /api/v1/token/revoke",
    ] {
        assert!(
            ROUTES.iter().any(|(m, p, _, _)| format!("{m} {p}") == key),
            "{key}"
        );
        // Route settings may only name routes of the API.
        assert!(routes.contains_key(key), "{key}: not a route of the API");
        let route = settings
            .get(key)
            .unwrap_or_else(|| panic!("no route settings for {key}"));
        assert_eq!(
            reference(&route["ThrottlingRateLimit"]).0,
            "TokenThrottleRate",
            "{key}"
        );
        assert_eq!(
            reference(&route["ThrottlingBurstLimit"]).0,
            "TokenThrottleBurst",
            "{key}"
        );
    }
}
