//! Signing keys: who may read the private key set.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use crate::support::{
    functions_by_binary, get, granted, list, of_type, reference, resource, role_of, tagged,
    template, text,
};

/// The functions whose grants include an action on `resource` (in [`Grant`]'s naming).
fn functions_granted(template: &Value, resource: &str, action: &str) -> BTreeSet<String> {
    of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .filter(|(name, _)| {
            granted(template, name)
                .iter()
                .any(|(a, r)| r == resource && a == action)
        })
        .map(|(name, _)| name)
        .collect()
}

#[test]
fn only_the_token_and_rotation_functions_can_read_the_private_signing_keys() {
    let template = template();
    let functions = functions_by_binary(&template);
    let signers = BTreeSet::from([
        functions["agentidp-tokens"].clone(),
        functions["agentidp-key-rotation"].clone(),
    ]);
    // Every grant in the stack is one that `granted` sees: policies sit on the functions' own
    // roles, and nothing else (a role, a managed policy, a secret's resource policy) can grant.
    for kind in [
        "AWS::IAM::Role",
        "AWS::IAM::ManagedPolicy",
        "AWS::SecretsManager::ResourcePolicy",
    ] {
        assert!(of_type(&template, kind).is_empty(), "a {kind} in the stack");
    }
    let roles: BTreeSet<String> = functions.values().map(|f| role_of(f)).collect();
    for (name, policy) in of_type(&template, "AWS::IAM::Policy") {
        for role in list(get(policy, &["Properties", "Roles"]).unwrap()) {
            let role = reference(role).0;
            assert!(roles.contains(&role), "{name} is attached to {role}");
        }
    }
    assert_eq!(
        functions_granted(&template, "private-keys", "secretsmanager:GetSecretValue"),
        signers,
        "readers of the private key set"
    );
    assert_eq!(
        functions_granted(&template, "kms-key", "kms:Decrypt"),
        signers,
        "decrypters of the private key set"
    );
    for (binary, function) in &functions {
        let granted = granted(&template, function);
        if !signers.contains(function) {
            assert!(
                granted
                    .iter()
                    .all(|(_, r)| r != "private-keys" && r != "kms-key"),
                "{binary}: {granted:?}"
            );
            assert!(
                granted.contains(&(
                    "secretsmanager:GetSecretValue".to_owned(),
                    "public-keys".to_owned()
                )),
                "{binary} verifies tokens with the public key set"
            );
        }
    }
    // Each function is told only of the secret it reads: the tokens function of the private key
    // set; the verifying functions and the rotation (which writes it) of the public one.
    let globals = get(
        &template,
        &["Globals", "Function", "Environment", "Variables"],
    )
    .unwrap();
    for variable in [
        "AGENTIDP_SIGNING_KEY_SECRET_ID",
        "AGENTIDP_PUBLIC_KEYS_SECRET_ID",
    ] {
        assert!(globals.get(variable).is_none(), "Globals set {variable}");
    }
    for (binary, function) in &functions {
        let variables = get(
            resource(&template, function),
            &["Properties", "Environment", "Variables"],
        );
        let secret_of = |variable: &str| {
            variables
                .and_then(|v| v.get(variable))
                .map(|v| reference(v).0)
        };
        let (private, public) = match binary.as_str() {
            "agentidp-tokens" => (Some("SigningKeySecret"), None),
            _ => (None, Some("PublicKeysSecret")),
        };
        assert_eq!(
            secret_of("AGENTIDP_SIGNING_KEY_SECRET_ID").as_deref(),
            private,
            "{binary}"
        );
        assert_eq!(
            secret_of("AGENTIDP_PUBLIC_KEYS_SECRET_ID").as_deref(),
            public,
            "{binary}"
        );
    }
}

/// A condition's value, by operator and key.
fn condition<'a>(statement: &'a Value, operator: &str, key: &str) -> Option<&'a Value> {
    get(statement, &["Condition", operator, key])
}

#[test]
fn the_private_key_set_is_encrypted_with_a_key_only_the_token_and_rotation_roles_decrypt_with() {
    let template = template();
    let secret = resource(&template, "SigningKeySecret");
    let key_id = get(secret, &["Properties", "KmsKeyId"]).expect("the secret names its KMS key");
    let key_name = reference(key_id).0;
    assert_eq!(key_name, "SigningKeyEncryptionKey");
    let key = resource(&template, &key_name);
    assert_eq!(
        key.get("Type").and_then(Value::as_str),
        Some("AWS::KMS::Key")
    );
    let functions = functions_by_binary(&template);
    let signer_roles = BTreeSet::from([
        role_of(&functions["agentidp-tokens"]),
        role_of(&functions["agentidp-key-rotation"]),
    ]);
    let statements = get(key, &["Properties", "KeyPolicy", "Statement"])
        .and_then(Value::as_sequence)
        .unwrap();
    // Actions that reveal what the key encrypted, directly or by granting it to another.
    let reveals =
        |action: &str| ["kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant"].contains(&action);
    let via_secrets_manager = |statement: &Value| {
        condition(statement, "StringEquals", "kms:ViaService").is_some_and(|service| {
            let (tag, value) = tagged(service).unwrap();
            tag == "Sub" && text(value) == "secretsmanager.${AWS::Region}.amazonaws.com"
        })
    };
    let mut decrypting_roles = BTreeSet::new();
    for statement in statements {
        let sid = statement.get("Sid").and_then(Value::as_str).unwrap_or("?");
        assert_eq!(
            statement.get("Effect").and_then(Value::as_str),
            Some("Allow"),
            "{sid}"
        );
        assert!(statement.get("NotAction").is_none() && statement.get("NotPrincipal").is_none());
        // The account is the only principal: a statement admits no role of itself, and the
        // account's IAM policies decide which of its principals act on the key, within the
        // conditions below.
        let principal = get(statement, &["Principal", "AWS"]).unwrap();
        let (tag, principal) = tagged(principal).unwrap();
        assert_eq!(
            (tag.as_str(), text(principal)),
            ("Sub", "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"),
            "{sid}"
        );
        let actions: Vec<&str> = list(&statement["Action"]).into_iter().map(text).collect();
        for action in &actions {
            assert!(!action.contains('*'), "{sid}: wildcard action {action}");
        }
        let crypto = actions.iter().any(|a| {
            reveals(a) || a.starts_with("kms:Encrypt") || a.starts_with("kms:GenerateDataKey")
        });
        if !crypto {
            assert!(
                statement.get("Condition").is_none(),
                "{sid}: administration"
            );
            continue;
        }
        assert!(
            via_secrets_manager(statement),
            "{sid}: the key is used only through Secrets Manager"
        );
        if !actions.iter().any(|a| reveals(a)) {
            continue;
        }
        let validation = condition(
            statement,
            "StringEquals",
            "kms:EncryptionContext:SecretVersionId",
        )
        .and_then(Value::as_str);
        match condition(statement, "ArnEquals", "aws:PrincipalArn") {
            Some(roles) => {
                assert!(validation.is_none(), "{sid}");
                for role in list(roles) {
                    let role = reference(role).0;
                    assert!(
                        signer_roles.contains(&role),
                        "{sid}: {role} may decrypt the private key set"
                    );
                    decrypting_roles.insert(role);
                }
            }
            // Secrets Manager checks that whoever sets a secret's key may use it, with a
            // Decrypt under this encryption context; it decrypts nothing of the secret.
            None => assert_eq!(
                validation,
                Some("RequestToValidateKeyAccess"),
                "{sid}: a decrypt for anyone but the token and rotation roles"
            ),
        }
    }
    assert_eq!(decrypting_roles, signer_roles);
}
