//! What the EC2 and Lightsail providers share: their settings in
//! tidekeeper.yaml turned into the AWS client's, and AWS errors turned into
//! ones a user can act on.

use std::time::Duration;

use tidekeeper_aws as aws;

use super::CloudError;
use crate::model::desired::{AwsCredentials, Lightsail as Settings};

/// Attempts per AWS call, retries included (throttling, 5xx).
const MAX_ATTEMPTS: u32 = 8;

fn env_var(provider: &'static str, name: &str) -> Result<String, CloudError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CloudError::Credentials {
            provider,
            var: name.to_string(),
        })
}

/// Credentials named in tidekeeper.yaml must be set now; the SDK's chain
/// is asked on the first call.
pub(super) fn check_env(provider: &'static str, s: &Settings) -> Result<(), CloudError> {
    if let AwsCredentials::Env {
        access_key_env,
        secret_key_env,
        ..
    } = &s.credentials
    {
        for name in [access_key_env, secret_key_env] {
            env_var(provider, name)?;
        }
    }
    Ok(())
}

/// The AWS client's settings for `providers.<provider>`.
pub(super) fn settings(provider: &'static str, s: &Settings) -> Result<aws::Settings, CloudError> {
    let auth = match &s.credentials {
        AwsCredentials::Env {
            access_key_env,
            secret_key_env,
            session_token_env,
        } => aws::Auth::Keys {
            access_key: env_var(provider, access_key_env)?,
            secret_key: env_var(provider, secret_key_env)?,
            session_token: session_token_env
                .as_deref()
                .map(|n| env_var(provider, n))
                .transpose()?,
        },
        AwsCredentials::Chain { profile } => aws::Auth::Chain {
            profile: profile.clone(),
        },
    };
    Ok(aws::Settings {
        region: s.region.clone(),
        auth,
        endpoint: s.endpoint.clone(),
        timeout: Duration::from_secs(s.timeout_secs.max(1)),
        max_attempts: MAX_ATTEMPTS,
    })
}

/// An AWS error while doing `what`; missing credentials get their own
/// error, which says where tidekeeper looked.
pub(super) fn error(provider: &'static str, what: &str, e: aws::Error) -> CloudError {
    if e.code == "NoCredentials" {
        return CloudError::NoCredentials {
            provider,
            message: e.message,
        };
    }
    CloudError::api(provider, what, e)
}
