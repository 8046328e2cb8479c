//! What tidekeeper's AWS clients (EC2, Lightsail) share: where the
//! credentials and the region come from, the endpoint, retries and
//! timeouts, and one error type a user can act on.
//!
//! [`config`] builds the SDK's `SdkConfig`; each service crate turns it
//! into its client with `Config::from(&shared)`. Credentials are never
//! logged.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Where the credentials come from.
pub enum Auth {
    /// A key pair (and a session token, for temporary credentials).
    Keys {
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
    },
    /// The SDK's default chain, as the AWS CLI does: `AWS_ACCESS_KEY_ID` …
    /// (with `AWS_SESSION_TOKEN`), then the profile (`profile`, else
    /// `AWS_PROFILE`, else `default`, with SSO and `credential_process`),
    /// web identity, the container's and the instance's role.
    Chain { profile: Option<String> },
}

pub struct Settings {
    /// None: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's, the instance's.
    pub region: Option<String>,
    pub auth: Auth,
    /// Another endpoint than AWS's (a proxy, or a local emulator in tests).
    pub endpoint: Option<String>,
    /// Limit for one HTTP attempt.
    pub timeout: Duration,
    /// Attempts per call, retries included.
    pub max_attempts: u32,
}

/// An error from an AWS service (or from reaching it), after the retries.
#[derive(Debug, Clone)]
pub struct Error {
    /// The service's error code (`IncorrectInstanceState`,
    /// `NotFoundException`, …), `NoRegion`, `NoCredentials`, or `""` when
    /// none came back.
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The thing asked for does not exist: EC2 says `InvalidX.NotFound`,
    /// Lightsail `NotFoundException`.
    pub fn not_found(&self) -> bool {
        self.code.ends_with(".NotFound") || self.code == "NotFoundException"
    }
}

fn no_region(provider: &str) -> Error {
    Error {
        code: "NoRegion".into(),
        message: format!(
            "no AWS region: set providers.{provider}.region in tidekeeper.yaml, \
             or AWS_REGION, or a region in the AWS profile"
        ),
    }
}

/// The SDK configuration for `s`; `provider` is the key under `providers:`
/// the settings came from, named in errors. With [`Auth::Chain`] the
/// profile files are read now and the credentials fetched on the first
/// call; with [`Auth::Keys`] no profile is read (unless for the region,
/// when none is set).
pub async fn config(s: Settings, provider: &str) -> Result<SdkConfig, Error> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(s.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(500))
        .with_max_backoff(Duration::from_secs(20));
    let timeout = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10).min(s.timeout))
        .operation_attempt_timeout(s.timeout)
        .build();
    let mut builder = match s.auth {
        Auth::Keys {
            access_key,
            secret_key,
            session_token,
        } => {
            let region = match s.region {
                Some(r) => Some(Region::new(r)),
                None => {
                    aws_config::meta::region::ProvideRegion::region(
                        &aws_config::default_provider::region::default_provider(),
                    )
                    .await
                }
            };
            SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(region)
                .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                    access_key,
                    secret_key,
                    session_token,
                    None,
                    "tidekeeper",
                )))
        }
        Auth::Chain { profile } => {
            let mut loader =
                aws_config::defaults(BehaviorVersion::latest()).http_client(http.clone());
            if let Some(p) = profile {
                loader = loader.profile_name(p);
            }
            if let Some(r) = s.region {
                loader = loader.region(Region::new(r));
            }
            loader.load().await.into_builder()
        }
    };
    builder = builder
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeout);
    if let Some(url) = s.endpoint {
        builder = builder.endpoint_url(url);
    }
    let shared = builder.build();
    if shared.region().is_none() {
        return Err(no_region(provider));
    }
    Ok(shared)
}

/// The error a user can act on, from any SDK call's failure: the service's
/// code and message, or what to set when no credentials were found.
pub fn error<E, R>(e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_string();
    if code.is_empty()
        && matches!(
            e,
            SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_)
        )
    {
        let context = DisplayErrorContext(&e).to_string();
        if context.contains("credentials") {
            return Error {
                code: "NoCredentials".into(),
                message: format!(
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     (with AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE \
                     (aws configure, aws sso login), or run where a container or \
                     instance role applies ({context})"
                ),
            };
        }
    }
    let message = match e.message() {
        Some(m) => m.to_string(),
        None => DisplayErrorContext(&e).to_string(),
    };
    Error { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(region: Option<&str>, endpoint: Option<&str>) -> Settings {
        Settings {
            region: region.map(String::from),
            auth: Auth::Keys {
                access_key: "AKIDEXAMPLE".into(),
                secret_key: "secret".into(),
                session_token: None,
            },
            endpoint: endpoint.map(String::from),
            timeout: Duration::from_secs(3),
            max_attempts: 4,
        }
    }

    #[tokio::test]
    async fn settings_reach_the_sdk_config_and_keys_are_the_credentials() {
        let c = config(
            settings(Some("eu-central-1"), Some("http://127.0.0.1:9")),
            "ec2",
        )
        .await
        .unwrap();
        assert_eq!(c.region().map(|r| r.as_ref()), Some("eu-central-1"));
        assert_eq!(c.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(c.retry_config().unwrap().max_attempts(), 4);
        let t = c.timeout_config().unwrap();
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
        use aws_credential_types::provider::ProvideCredentials;
        let creds = c
            .credentials_provider()
            .unwrap()
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDEXAMPLE");
    }

    #[test]
    fn not_found_covers_both_services_codes() {
        let e = |code: &str| Error {
            code: code.into(),
            message: String::new(),
        };
        assert!(e("InvalidInstanceID.NotFound").not_found());
        assert!(e("NotFoundException").not_found());
        assert!(!e("UnauthorizedOperation").not_found());
        assert_eq!(
            e("NoRegion").to_string(),
            "NoRegion: ",
            "a code is shown before the message"
        );
    }
}
