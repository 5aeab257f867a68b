use super::*;
use crate::shuffle::grant::TicketKey;

const T1: &str = "ember_1111";
const T2: &str = "ember_2222";

fn basic(user: &str, password: &str) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}").into_bytes()
}

fn bearer_header(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

fn verifier(anonymous: bool) -> Verifier {
    let text = format!(
        "# the cluster's clients\n{}\n\n{}",
        Credentials::line("alice", T1).unwrap(),
        Credentials::line("bob", T2).unwrap()
    );
    Verifier {
        credentials: Credentials::parse(&text, "tokens").unwrap(),
        anonymous,
        session_key: Some(SessionKey::from_cluster_key(
            &TicketKey::from_bytes(&[7; 32]).unwrap(),
        )),
    }
}

#[test]
fn lines_hold_names_and_hashes_only_and_bad_ones_are_named() {
    let line = Credentials::line("alice", T1).unwrap();
    assert!(line.starts_with("alice:sha256:"), "{line}");
    assert!(!line.contains(T1));
    let both = format!("{line}, {}", Credentials::line("bob", T2).unwrap());
    assert_eq!(Credentials::parse(&both, "env").unwrap().len(), 2);
    for bad in [
        "alice",
        "alice:sha256:abc",
        "alice:md5:0000000000000000000000000000000000000000000000000000000000000000",
        "al ice:sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ":sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "alice:sha256:000000000000000000000000000000000000000000000000000000000000000G",
        "alice:sha256:000000000000000000000000000000000000000000000000000000000000000A",
    ] {
        let err = Credentials::parse(&format!("# x\n{bad}"), "tokens.txt").unwrap_err();
        assert!(
            err.to_string().contains("tokens.txt, line 2"),
            "{bad}: {err}"
        );
    }
    assert!(Credentials::line("a b", T1).is_err());
}

#[test]
fn tokens_and_basic_credentials_name_their_user() {
    let v = verifier(false);
    let now = 1_000;
    assert_eq!(
        v.authenticate(Some(&bearer_header(T1)), now),
        Ok(Principal::User("alice".into()))
    );
    assert_eq!(
        v.authenticate(Some(&basic("bob", T2)), now),
        Ok(Principal::User("bob".into()))
    );
    // Someone else's token is not a password.
    assert_eq!(
        v.authenticate(Some(&basic("alice", T2)), now),
        Err(AuthError::Invalid)
    );
    assert_eq!(
        v.authenticate(Some(&bearer_header("ember_3333")), now),
        Err(AuthError::Invalid)
    );
    assert_eq!(v.authenticate(None, now), Err(AuthError::Missing));
    assert_eq!(
        verifier(true).authenticate(None, now),
        Ok(Principal::Anonymous)
    );
    // Presented but wrong is refused even where anonymous calls are let in.
    assert_eq!(
        verifier(true).authenticate(Some(&bearer_header("nope")), now),
        Err(AuthError::Invalid)
    );
    for bad in ["Bearer", "Token abc", "Basic !!!", "Basic YWxpY2U="] {
        assert_eq!(
            v.authenticate(Some(bad.as_bytes()), now),
            Err(AuthError::Malformed),
            "{bad}"
        );
    }
}

#[test]
fn sessions_are_signed_expire_and_end_with_their_token() {
    let v = verifier(false);
    let now = 5_000;
    let session = v.issue_session(&basic("alice", T1), now).unwrap();
    assert!(session.starts_with(SESSION_PREFIX), "{session}");
    assert!(!session.contains(T1));
    let header = bearer_header(&session);
    assert_eq!(
        v.authenticate(Some(&header), now + 1),
        Ok(Principal::User("alice".into()))
    );
    // Any scheduler with the same cluster key and credentials accepts it.
    assert_eq!(
        verifier(false).authenticate(Some(&header), now + 1),
        Ok(Principal::User("alice".into()))
    );
    let later = now + SESSION_TTL.as_millis() as u64 + 1;
    assert_eq!(
        v.authenticate(Some(&header), later),
        Err(AuthError::Expired)
    );
    // Edited: another user, a later expiry, another cluster's key.
    let parts: Vec<&str> = session.split('.').collect();
    let as_bob = format!(
        "{}.{}.{}.{}",
        parts[0],
        hex::encode("bob"),
        parts[2],
        parts[3]
    );
    let extended = format!("{}.{}.{}.{}", parts[0], parts[1], u64::MAX, parts[3]);
    for forged in [
        as_bob,
        extended,
        format!("{session}.x"),
        "ember-session.zz".into(),
    ] {
        assert_eq!(
            v.authenticate(Some(&bearer_header(&forged)), now),
            Err(AuthError::Invalid),
            "{forged}"
        );
    }
    let other_cluster = Verifier {
        session_key: Some(SessionKey::from_cluster_key(
            &TicketKey::from_bytes(&[8; 32]).unwrap(),
        )),
        ..verifier(false)
    };
    assert_eq!(
        other_cluster.authenticate(Some(&header), now),
        Err(AuthError::Invalid)
    );
    // Alice's token revoked (her line removed): her sessions end.
    let revoked = Verifier {
        credentials: Credentials::parse(&Credentials::line("bob", T2).unwrap(), "t").unwrap(),
        ..verifier(false)
    };
    assert_eq!(
        revoked.authenticate(Some(&header), now),
        Err(AuthError::Invalid)
    );
    // Bad credentials get no session; without the cluster key there is none yet.
    assert_eq!(
        v.issue_session(&basic("alice", T2), now),
        Err(AuthError::Invalid)
    );
    let keyless = Verifier {
        session_key: None,
        ..verifier(false)
    };
    assert_eq!(
        keyless.issue_session(&basic("alice", T1), now),
        Err(AuthError::NotReady)
    );
}

#[test]
fn the_credentials_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, Credentials::line("alice", T1).unwrap()).unwrap();
    let options = AuthOptions {
        auth_file: Some(file.clone()),
        ..AuthOptions::default()
    };
    let auth = Authenticator::new(&options).unwrap();
    assert!(auth.authenticate(Some(&bearer_header(T1))).is_ok());
    assert_eq!(
        auth.authenticate(Some(&bearer_header(T2))),
        Err(AuthError::Invalid)
    );
    std::fs::write(
        &file,
        format!("{}\n", Credentials::line("bob", T2).unwrap()),
    )
    .unwrap();
    auth.state.lock().checked -= RECHECK;
    assert_eq!(
        auth.authenticate(Some(&bearer_header(T2))),
        Ok(Principal::User("bob".into()))
    );
    assert_eq!(
        auth.authenticate(Some(&bearer_header(T1))),
        Err(AuthError::Invalid)
    );
    // Without credentials, a scheduler must be told to let anyone in.
    let err = Authenticator::new(&AuthOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--allow-anonymous"), "{err}");
    assert!(Authenticator::new(&AuthOptions::open()).is_ok());
}
