//! A small CRI client: the calls the kubelet makes to containerd's CRI plugin (pull an image, run a
//! pod sandbox with a runtime handler, create and start a container), over the real gRPC API on
//! containerd's socket. Blocking, for tests. Errors come back as containerd's own message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::1]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to containerd's CRI socket");
        Cri { rt, channel }
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// `PullImage` without credentials of its own (so only the node's registry configuration can
    /// authenticate); the image reference it resolved to, or containerd's status (its message says why).
    pub fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        };
        self.rt
            .block_on(self.images().pull_image(req))
            .map(|r| r.into_inner().image_ref)
    }

    /// `RunPodSandbox` on the host network (no CNI) with `handler` (empty: the default runtime).
    pub fn run_pod(&self, name: &str, handler: &str, log_dir: &Path) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(pod_config(name, log_dir)),
            runtime_handler: handler.to_string(),
        };
        self.rt
            .block_on(self.runtime().run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// `CreateContainer` + `StartContainer` of `image` running `command` in pod `pod`.
    pub fn start_container(
        &self,
        pod: &str,
        name: &str,
        log_dir: &Path,
        image: &str,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config(pod, log_dir)),
        };
        let id = self
            .rt
            .block_on(self.runtime().create_container(req))
            .map(|r| r.into_inner().container_id)?;
        self.rt
            .block_on(self.runtime().start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))?;
        Ok(id)
    }

    /// The container's state (`CONTAINER_RUNNING`, `CONTAINER_EXITED`, ...) and exit code.
    pub fn container_state(&self, id: &str) -> (String, i32) {
        let s = self
            .rt
            .block_on(self.runtime().container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        (
            cri::ContainerState::try_from(s.state).map_or("?".into(), |st| st.as_str_name().to_string()),
            s.exit_code,
        )
    }

    /// Stop and remove every pod sandbox (and so its containers).
    pub fn remove_all_pods(&self) {
        let pods = self
            .rt
            .block_on(
                self.runtime()
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
            )
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for p in pods {
            let _ = self
                .rt
                .block_on(self.runtime().stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                }));
            let _ = self.rt.block_on(
                self.runtime()
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id }),
            );
        }
    }
}

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A host-network pod shares the host's UTS namespace: no hostname of its own (crun refuses
        // one without a UTS namespace; runc ignores it).
        hostname: String::new(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::new(),
        annotations: HashMap::new(),
        ..Default::default()
    }
}
