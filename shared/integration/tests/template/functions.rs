//! The functions: the binaries they run, and their environment.

use std::collections::BTreeSet;

use agentidp_http::FunctionGroup;
use agentidp_store_dynamodb::TABLE_SPECS;
use serde_yaml_ng::Value;

use crate::fixture;
use crate::support::{
    binary_of, functions_by_binary, get, of_type, reference, tables, tagged, template, text,
};

#[test]
fn the_deployed_functions_are_given_no_endpoint_of_their_own() {
    // The endpoint variables are there for `sam local` to set; on AWS a value would send every
    // request of the functions, signed and carrying secrets, wherever it names.
    let template = template();
    let (tag, equals) = tagged(get(&template, &["Conditions", "SamLocalOnly"]).unwrap()).unwrap();
    assert_eq!(tag, "Equals");
    let equals = equals.as_sequence().unwrap();
    assert_eq!(reference(&equals[0]).0, "AWS::URLSuffix");
    assert_eq!(equals[1].as_str(), Some(""), "never true on AWS");
    let mut environments = vec![
        get(
            &template,
            &["Globals", "Function", "Environment", "Variables"],
        )
        .unwrap(),
    ];
    for (_, function) in of_type(&template, "AWS::Serverless::Function") {
        environments.extend(get(function, &["Properties", "Environment", "Variables"]));
    }
    let mut declared = BTreeSet::new();
    for (name, value) in environments.iter().flat_map(|v| v.as_mapping().unwrap()) {
        let name = text(name);
        if !name.starts_with("AWS_ENDPOINT_URL") {
            continue;
        }
        let (tag, choice) =
            tagged(value).unwrap_or_else(|| panic!("{name} is set on AWS: {value:?}"));
        assert_eq!(tag, "If", "{name}");
        let choice = choice.as_sequence().unwrap();
        assert_eq!(choice[0].as_str(), Some("SamLocalOnly"), "{name}");
        assert_eq!(reference(&choice[2]).0, "AWS::NoValue", "{name}");
        declared.insert(name.to_owned());
    }
    // The two services the functions call.
    assert_eq!(
        declared,
        BTreeSet::from([
            "AWS_ENDPOINT_URL_DYNAMODB".to_owned(),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER".to_owned()
        ])
    );
}

#[test]
fn the_functions_are_the_workspaces_lambda_binaries_for_arm64_on_al2023() {
    let template = template();
    let globals = get(&template, &["Globals", "Function"]).unwrap();
    assert_eq!(
        globals.get("Runtime").and_then(Value::as_str),
        Some("provided.al2023")
    );
    assert_eq!(
        globals
            .get("Architectures")
            .and_then(Value::as_sequence)
            .map(|a| a.len()),
        Some(1)
    );
    assert_eq!(globals["Architectures"][0].as_str(), Some("arm64"));
    // Every binary of functions/*/ and nothing else.
    let mut binaries = BTreeSet::new();
    for entry in std::fs::read_dir(fixture::repo_root().join("functions")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let parsed: toml_bins::Manifest = toml_bins::parse(&text);
        binaries.extend(parsed.bins);
    }
    let declared: BTreeSet<String> = functions_by_binary(&template).into_keys().collect();
    assert_eq!(
        declared, binaries,
        "template functions (left) vs functions/*/ binaries (right)"
    );
    for group in FunctionGroup::ALL {
        assert!(declared.contains(&binary_of(group)), "{group:?}");
    }
    for (name, function) in of_type(&template, "AWS::Serverless::Function") {
        let properties = function.get("Properties").unwrap();
        assert_eq!(
            properties.get("CodeUri").and_then(Value::as_str),
            Some("."),
            "{name}"
        );
        for setting in ["MemorySize", "Timeout"] {
            assert!(
                properties.get(setting).is_some(),
                "{name}: {setting} is chosen per function"
            );
        }
    }
}

/// Just enough of a Cargo manifest: the `name` of each `[[bin]]`.
mod toml_bins {
    pub struct Manifest {
        pub bins: Vec<String>,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut bins = Vec::new();
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name") {
                let value = value.trim_start().trim_start_matches('=').trim();
                bins.push(value.trim_matches('"').to_owned());
            }
        }
        Manifest { bins }
    }
}

#[test]
fn the_functions_environment_names_every_table() {
    let template = template();
    let tables = tables(&template);
    let variables = get(
        &template,
        &["Globals", "Function", "Environment", "Variables"],
    )
    .unwrap();
    let command = get(&template, &["Outputs", "CreateOrgCommand", "Value"]).unwrap();
    let (tag, command) = tagged(command).unwrap();
    assert_eq!(tag, "Sub");
    let command = text(command);
    assert!(command.contains("agentidp-admin -- --store dynamodb create-org"));
    for spec in &TABLE_SPECS {
        let (logical, _) = tables
            .iter()
            .find(|(_, s)| s.suffix == spec.suffix)
            .unwrap();
        let value = variables
            .get(spec.env_var)
            .unwrap_or_else(|| panic!("Globals set no {}", spec.env_var));
        assert_eq!(
            reference(value),
            (logical.clone(), String::new()),
            "{}",
            spec.env_var
        );
        assert!(
            command.contains(&format!("{}=${{{logical}}}", spec.env_var)),
            "the CreateOrgCommand output sets no {}",
            spec.env_var
        );
    }
    // Every AGENTIDP_ variable the template sets is one the code reads (a misspelt name would
    // be ignored silently, leaving the default), and the issuer, which has no default on
    // Lambda, is set. Settings with good defaults need not be parameters.
    let mut read = BTreeSet::new();
    let mut sources: Vec<_> = std::fs::read_dir(fixture::repo_root().join("shared"))
        .unwrap()
        .map(|crate_dir| crate_dir.unwrap().path().join("src"))
        .collect();
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code = std::fs::read_to_string(&path).unwrap();
            for piece in code.split('"').skip(1).step_by(2) {
                if piece.starts_with("AGENTIDP_")
                    && piece.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                {
                    read.insert(piece.to_owned());
                }
            }
        }
    }
    assert!(variables.get("AGENTIDP_ISSUER").is_some());
    let mut set = vec![variables];
    for (_, function) in of_type(&template, "AWS::Serverless::Function") {
        set.extend(get(function, &["Properties", "Environment", "Variables"]));
    }
    for (name, _) in set.iter().flat_map(|v| v.as_mapping().unwrap()) {
        let name = text(name);
        if name.starts_with("AGENTIDP_") {
            assert!(
                read.contains(name),
                "the template sets {name}, which no code reads"
            );
        }
    }
}

#[test]
fn every_free_plan_limit_the_functions_read_is_a_stack_parameter() {
    // A limit the configuration reads but the template does not set could be changed locally
    // and never on AWS, where the functions would keep the default.
    let read = std::cell::RefCell::new(BTreeSet::new());
    agentidp_core::config::Config::from_lookup(|name| {
        read.borrow_mut().insert(name.to_owned());
        (name == "AGENTIDP_ISSUER").then(|| "https://idp.example.com".to_owned())
    })
    .unwrap();
    let limits: Vec<String> = read
        .into_inner()
        .into_iter()
        .filter(|name| name.starts_with("AGENTIDP_FREE_"))
        .collect();
    assert!(limits.len() >= 5, "{limits:?}");
    let template = template();
    let variables = get(
        &template,
        &["Globals", "Function", "Environment", "Variables"],
    )
    .unwrap();
    let parameters = get(&template, &["Parameters"]).unwrap();
    for name in &limits {
        let value = variables
            .get(name.as_str())
            .unwrap_or_else(|| panic!("Globals set no {name}"));
        let (parameter, _) = reference(value);
        let declared = get(parameters, &[parameter.as_str()])
            .unwrap_or_else(|| panic!("{name} refers to no parameter {parameter}"));
        assert_eq!(
            get(declared, &["Type"]).and_then(Value::as_str),
            Some("Number"),
            "{name}"
        );
    }
}
