//! The S3 stand-in enforces what Cloudflare R2 enforces and s3s-fs does not: multipart parts but the last of
//! one size, at least 5 MiB, the last no larger (<https://developers.cloudflare.com/r2/objects/multipart-objects/>,
//! read 2026-12-06). Driven with aws-sdk-s3, the client the project uses.

use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use fakes::s3::{R2_MIN_PART_SIZE, R2_UNEQUAL_PARTS, S3Server};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "r2-rules";

async fn server() -> (S3Server, Client, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let server = S3Server::start(root.path(), "127.0.0.1:0".parse().unwrap(), "key", "secret")
        .await
        .unwrap();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("auto"))
        .endpoint_url(server.endpoint())
        .credentials_provider(Credentials::new("key", "secret", None, None, "test"))
        // As jobs::storage configures it for R2.
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    let client = Client::from_conf(config);
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    (server, client, root)
}

/// Uploads parts of these sizes and completes the upload.
async fn upload_in_parts(
    client: &Client,
    key: &str,
    sizes: &[usize],
) -> Result<
    (),
    aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError,
    >,
> {
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut completed = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let number = i32::try_from(i + 1).unwrap();
        let part = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(vec![b'x'; size]))
            .send()
            .await
            .unwrap();
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_owned))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_upload_whose_non_final_parts_differ_in_size_is_refused_with_r2s_invalid_part() {
    let (_server, client, _root) = server().await;
    let error = upload_in_parts(&client, "uneven", &[5 * MIB, 6 * MIB, MIB])
        .await
        .unwrap_err();
    let service = error.into_service_error();
    assert_eq!(service.meta().code(), Some("InvalidPart"), "{service:?}");
    assert_eq!(service.meta().message(), Some(R2_UNEQUAL_PARTS));
    let missing = client
        .head_object()
        .bucket(BUCKET)
        .key("uneven")
        .send()
        .await;
    assert!(missing.is_err(), "nothing was stored");
}

#[tokio::test]
async fn a_last_part_larger_than_the_others_or_a_small_leading_part_is_refused() {
    let (_server, client, _root) = server().await;
    let larger_last = upload_in_parts(&client, "a", &[5 * MIB, 5 * MIB + 1])
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(larger_last.meta().code(), Some("InvalidPart"));
    let small = R2_MIN_PART_SIZE as usize - 1;
    let too_small = upload_in_parts(&client, "b", &[small, small])
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(too_small.meta().code(), Some("EntityTooSmall"));
}

#[tokio::test]
async fn equal_parts_and_a_smaller_last_one_complete() {
    let (_server, client, _root) = server().await;
    upload_in_parts(&client, "even", &[5 * MIB, 5 * MIB, 3])
        .await
        .unwrap();
    upload_in_parts(&client, "single", &[3]).await.unwrap();
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("even")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10 * MIB as i64 + 3));
}
