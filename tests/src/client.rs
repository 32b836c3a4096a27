//! Talking to a running [`Host`] over HTTP the way clients and admins do, and reading its
//! answers whole as a [`Reply`].

use std::path::Path;

use serde_json::Value;

use crate::{ADMIN_TOKEN, Host, auth};

impl Host {
    pub async fn post_json(&self, path: &str, body: &str) -> anyhow::Result<Reply> {
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .bearer_auth(auth::token_for_body(body))
            .body(body.to_string())
            .send()
            .await?;
        Reply::read(response).await
    }

    /// `GET path` as an admin; fails unless the answer is 200 with a JSON body.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(auth::admin_token())
            .send()
            .await?;
        let reply = Reply::read(response).await?;
        anyhow::ensure!(
            reply.status == 200,
            "GET {path}: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }

    /// `GET path` with `token` as the bearer, whatever the answer.
    pub async fn get_as(&self, path: &str, token: &str) -> anyhow::Result<Reply> {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(token)
            .send()
            .await?;
        Reply::read(response).await
    }

    /// `POST path` with a JSON `body` and `token` as the bearer, whatever the answer.
    pub async fn post_as(&self, path: &str, body: &Value, token: &str) -> anyhow::Result<Reply> {
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await?;
        Reply::read(response).await
    }

    /// `POST path` with an `Idempotency-Key`: a transfer as its sender, a deposit as the
    /// static admin.
    pub async fn post_with_key(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Reply> {
        self.post_text_with_key(path, &body.to_string(), key).await
    }

    /// [`Host::post_with_key`] with any body text, JSON or not.
    pub async fn post_text_with_key(
        &self,
        path: &str,
        text: &str,
        key: &str,
    ) -> anyhow::Result<Reply> {
        let text = text.to_string();
        let token = if path.starts_with("/admin") {
            ADMIN_TOKEN.to_string()
        } else {
            auth::token_for_body(&text)
        };
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .bearer_auth(token)
            .body(text)
            .send()
            .await?;
        Reply::read(response).await
    }

    pub async fn transfer(&self, body: Value) -> anyhow::Result<Reply> {
        self.post_json("/transfers", &body.to_string()).await
    }

    /// The sum of the `/metrics` samples of `name` whose labels contain every one of `labels`
    /// (each written as in the text format, e.g. `outcome="accepted"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|line| {
                line.split(['{', ' ']).next() == Some(name)
                    && labels.iter().all(|label| line.contains(label))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Uploads a guest component as the static admin; its version. Fails unless stored (201).
    pub async fn upload_guest(&self, file: &Path) -> anyhow::Result<String> {
        let uploaded = self
            .client
            .put(format!("{}/admin/guest", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .body(std::fs::read(file)?)
            .send()
            .await?;
        anyhow::ensure!(uploaded.status() == 201, "upload: {}", uploaded.status());
        let version = uploaded.json::<Value>().await?["version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(version)
    }

    /// This replica's shadow report on `version` once it counts `runs` runs, or as it stands
    /// after about four seconds.
    pub async fn shadow_report(&self, version: &str, runs: u64) -> anyhow::Result<Value> {
        let mut report = Value::Null;
        for _ in 0..200 {
            report = self
                .get_json(&format!("/admin/guest/{version}/shadow"))
                .await?;
            if report["replica_stats"]["runs"] == runs {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(report)
    }

    /// Activates a stored guest version as the static admin. Fails unless accepted (200).
    pub async fn activate_guest(&self, version: &str) -> anyhow::Result<()> {
        let activated = self
            .client
            .post(format!("{}/admin/guest/{version}/activate", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        anyhow::ensure!(
            activated.status() == 200,
            "activate: {}",
            activated.status()
        );
        Ok(())
    }

    /// Funds an account through the admin API; fails the test if it is refused.
    pub async fn deposit(
        &self,
        user_id: i64,
        currency: &str,
        amount: &str,
    ) -> anyhow::Result<Value> {
        let body = serde_json::json!({"user_id": user_id, "currency": currency, "amount": amount});
        let response = self
            .client
            .post(format!("{}/admin/deposits", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await?;
        let reply = Reply::read(response).await?;
        anyhow::ensure!(
            reply.status == 200,
            "deposit refused: {} {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A response read whole; a body that is not JSON becomes a JSON string.
    pub async fn read(response: reqwest::Response) -> anyhow::Result<Reply> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The `type`s of a FastAPI-style validation error, with the field each names.
    pub fn problems(&self) -> Vec<(String, String)> {
        self.body["detail"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let field = item["loc"]
                            .as_array()
                            .and_then(|loc| loc.last())
                            .and_then(Value::as_str);
                        (
                            field.unwrap_or("").to_string(),
                            item["type"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
