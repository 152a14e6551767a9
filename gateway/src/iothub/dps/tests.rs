use super::*;

const KEY: &str = "c2FuZHN0ZXAgdGVzdCBrZXkgMzIgYnl0ZXMgbG9uZyE=";

fn config() -> DpsConfig {
    DpsConfig {
        id_scope: "0ne00000A0A".into(),
        registration_id: "gw-0042".into(),
        symmetric_key: Some(KEY.into()),
        ..DpsConfig::default()
    }
}

fn setup() -> DpsSetup {
    config().setup(false).unwrap()
}

/// The example of Microsoft's "Symmetric key attestation" page (group enrollments): the group
/// key and registration id it shows give the derived key it shows.
#[test]
fn a_group_enrollments_device_key_matches_the_documented_example() {
    assert_eq!(
        derive_device_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
        )
        .unwrap(),
        "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
    );
    assert_eq!(
        derive_device_key("not base64!", "r"),
        Err(AuthError::KeyNotBase64)
    );
}

#[test]
fn the_connect_names_the_scope_and_registration_and_signs_with_the_registration_policy() {
    let s = setup();
    assert_eq!(
        s.user_name(),
        "0ne00000A0A/registrations/gw-0042/api-version=2019-03-31"
    );
    let p = s.password(1_900_000_000).unwrap().unwrap();
    let sig = auth::sas_token("0ne00000A0A/registrations/gw-0042", KEY, 1_900_000_000).unwrap();
    assert_eq!(p, format!("{sig}&skn=registration"));
    assert!(p.starts_with("SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fgw-0042&sig="));
    let x509 = DpsConfig {
        symmetric_key: None,
        ..config()
    }
    .setup(true)
    .unwrap();
    assert_eq!(x509.attestation, Attestation::X509);
    assert_eq!(x509.password(1).unwrap(), None);
    let body: Value = serde_json::from_slice(&s.register_body()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"registrationId": "gw-0042",
            "payload": {"modelId": "dtmi:azure:iot:deviceUpdateModel;3"}})
    );
    assert_eq!(
        poll_topic(7, "4.65f6.331f-35e2"),
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=4.65f6.331f-35e2"
    );
    assert_eq!(
        register_topic(1),
        "$dps/registrations/PUT/iotdps-register/?$rid=1"
    );
}

#[test]
fn a_dps_table_that_cannot_work_is_refused_naming_the_field() {
    let err = |c: DpsConfig, cert: bool| c.setup(cert).unwrap_err().to_string();
    let missing = DpsConfig {
        id_scope: String::new(),
        ..config()
    };
    assert_eq!(err(missing, false), "[iothub.dps] id-scope is missing");
    for bad in ["gw/42", "gw-42.", "", &"x".repeat(129), "gw 42"] {
        let c = DpsConfig {
            registration_id: bad.into(),
            ..config()
        };
        assert!(err(c, false).contains("registration-id"), "{bad}");
    }
    let scope = DpsConfig {
        id_scope: "0ne/../x".into(),
        ..config()
    };
    assert!(err(scope, false).starts_with("[iothub.dps] id-scope `0ne/../x`"));
    let endpoint = DpsConfig {
        global_endpoint: "dps.example:8883".into(),
        ..config()
    };
    assert!(err(endpoint, false).contains("global-endpoint"));
    assert!(matches!(
        config().setup(true),
        Err(DpsError::KeyAndCertificate)
    ));
    let none = DpsConfig {
        symmetric_key: None,
        ..config()
    };
    assert!(matches!(none.setup(false), Err(DpsError::NoCredential)));
    let both = DpsConfig {
        symmetric_key_file: Some("/k".into()),
        ..config()
    };
    assert!(matches!(both.setup(false), Err(DpsError::BothKeys)));
    let garbage = DpsConfig {
        symmetric_key: Some("not base64!".into()),
        ..config()
    };
    assert_eq!(
        err(garbage, false),
        "[iothub.dps] symmetric-key: not base64"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = DpsConfig {
        symmetric_key: None,
        symmetric_key_file: Some(dir.path().join("absent")),
        ..config()
    };
    assert!(err(file, false).starts_with("[iothub.dps] symmetric-key-file "));
    std::fs::write(dir.path().join("key"), format!("{KEY}\n")).unwrap();
    let file = DpsConfig {
        symmetric_key: None,
        symmetric_key_file: Some(dir.path().join("key")),
        ..config()
    };
    assert_eq!(
        file.setup(false).unwrap().attestation,
        Attestation::SymmetricKey(KEY.into())
    );
}

#[test]
fn answer_topics_are_read_with_their_request_and_pause() {
    assert_eq!(
        parse_response("$dps/registrations/res/202/?$rid=2&retry-after=3"),
        Some(Response {
            status: 202,
            rid: 2,
            retry_after: Some(Duration::from_secs(3))
        })
    );
    assert_eq!(
        parse_response("$dps/registrations/res/200/?$rid=9"),
        Some(Response {
            status: 200,
            rid: 9,
            retry_after: None
        })
    );
    for other in [
        "$dps/registrations/res/202/?retry-after=3",
        "$dps/registrations/res/abc/?$rid=1",
        "$iothub/twin/res/200/?$rid=1",
    ] {
        assert_eq!(parse_response(other), None, "{other}");
    }
}

fn answer(status: u16, retry: Option<u64>, body: Value) -> Result<Next, DpsError> {
    let r = Response {
        status,
        rid: 1,
        retry_after: retry.map(Duration::from_secs),
    };
    next(&setup(), &r, body.to_string().as_bytes())
}

/// The bodies in the shapes of the documentation's RegistrationOperationStatus.
#[test]
fn assigning_is_polled_assigned_is_kept_and_failures_say_why() {
    let op = "4.65f62b2644c85bb1.331ffb1b-35e2-4b5a-9e68-f1fa7d5efc33";
    assert_eq!(
        answer(
            202,
            Some(3),
            serde_json::json!({"operationId": op, "status": "assigning"})
        )
        .unwrap(),
        Next::Poll {
            operation_id: op.into(),
            after: Duration::from_secs(3)
        }
    );
    let assigned = serde_json::json!({"operationId": op, "status": "assigned",
        "registrationState": {"registrationId": "gw-0042", "assignedHub": "contoso.azure-devices.net",
            "deviceId": "gw-0042", "status": "assigned", "substatus": "initialAssignment"}});
    let Next::Assigned(a) = answer(200, None, assigned).unwrap() else {
        panic!("not assigned");
    };
    assert_eq!(
        (
            a.assigned_hub.as_str(),
            a.device_id.as_str(),
            a.substatus.as_deref()
        ),
        (
            "contoso.azure-devices.net",
            "gw-0042",
            Some("initialAssignment")
        )
    );
    assert!(a.is_for(&setup()));
    let c = a.connection(&setup());
    assert_eq!(c.resource(), "contoso.azure-devices.net/devices/gw-0042");
    assert_eq!(c.shared_access_key.as_deref(), Some(KEY));

    let failed = serde_json::json!({"operationId": op, "status": "failed",
        "registrationState": {"registrationId": "gw-0042", "status": "failed",
            "errorCode": 400209, "errorMessage": "Custom allocation failed"}});
    assert_eq!(
        answer(200, None, failed).unwrap_err().to_string(),
        "DPS ended the registration as failed: Custom allocation failed (error 400209)"
    );
    let refused = serde_json::json!({"errorCode": 401002, "message": "Unauthorized"});
    assert_eq!(
        answer(401, None, refused).unwrap_err().to_string(),
        "DPS refused the registration (401): Unauthorized"
    );
    assert_eq!(
        answer(429, Some(5), Value::Null).unwrap(),
        Next::Again {
            after: Duration::from_secs(5)
        }
    );
    assert_eq!(
        answer(503, None, Value::Null).unwrap(),
        Next::Again {
            after: DEFAULT_RETRY_AFTER
        }
    );
}

/// DPS's answers are not signed: what goes into a topic, a host to connect to or a client id is
/// checked, a pause is bounded, and anything else is refused by name.
#[test]
fn hostile_answers_are_refused_and_pauses_are_bounded() {
    let assigned = |hub: &str, device: &str| {
        serde_json::json!({"operationId": "1", "status": "assigned",
            "registrationState": {"assignedHub": hub, "deviceId": device}})
    };
    for (hub, device, what) in [
        ("evil.example/x", "d", "assignedHub"),
        ("evil.example:1883", "d", "assignedHub"),
        ("", "d", "assignedHub"),
        ("h.example", "d/../x", "deviceId"),
        ("h.example", "", "deviceId"),
        ("h.example", &"d".repeat(129), "deviceId"),
        ("h.example", "d\u{0}", "deviceId"),
    ] {
        let e = answer(200, None, assigned(hub, device))
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{hub} {device}: {e}");
    }
    for op in ["a/b", "a#", "a+b", "a&x=1", ""] {
        let e = answer(
            202,
            None,
            serde_json::json!({"operationId": op, "status": "assigning"}),
        );
        assert!(matches!(e, Err(DpsError::BadAnswer(_))), "{op}");
    }
    let poll = |retry| {
        answer(
            202,
            Some(retry),
            serde_json::json!({"operationId": "o", "status": "assigning"}),
        )
    };
    assert!(matches!(poll(86_400).unwrap(), Next::Poll { after, .. } if after == MAX_RETRY_AFTER));
    assert!(
        matches!(poll(0).unwrap(), Next::Poll { after, .. } if after == Duration::from_secs(1))
    );
    let e = answer(200, None, serde_json::json!({"status": "gone\u{1b}[2J"})).unwrap_err();
    assert!(e.to_string().contains("status `gone?[2J`"), "{e}");
    let r = Response {
        status: 200,
        rid: 1,
        retry_after: None,
    };
    assert!(matches!(
        next(&setup(), &r, b"<html>"),
        Err(DpsError::BadAnswer(_))
    ));
}
