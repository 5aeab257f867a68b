//! The scheduler's gRPC client to executors (launch, cancel, free data), one channel per address.

use ember_core::job::TaskDefinition;
use ember_core::net::Channels;
use ember_core::{JobId, Result, TaskId};
use ember_proto::error_from_status;
use ember_proto::pb;
use ember_proto::pb::executor_service_client::ExecutorServiceClient;
use tonic::transport::Channel;

#[derive(Debug, Clone, Default)]
pub struct ExecutorClients {
    channels: Channels,
}

impl ExecutorClients {
    fn client(&self, address: &str) -> Result<ExecutorServiceClient<Channel>> {
        let channel = self.channels.get(address)?;
        Ok(ExecutorServiceClient::new(channel)
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES))
    }

    pub async fn launch(&self, address: &str, tasks: &[TaskDefinition]) -> Result<()> {
        let request = pb::LaunchTasksRequest {
            tasks: tasks.iter().map(Into::into).collect(),
        };
        self.client(address)?
            .launch_tasks(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    pub async fn cancel(&self, address: &str, tasks: &[TaskId]) -> Result<()> {
        let request = pb::CancelTasksRequest {
            task_ids: tasks.iter().map(Into::into).collect(),
        };
        self.client(address)?
            .cancel_tasks(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    pub async fn remove_job_data(&self, address: &str, job_id: &JobId) -> Result<()> {
        let request = pb::RemoveJobDataRequest {
            job_id: job_id.to_string(),
        };
        self.client(address)?
            .remove_job_data(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }
}
