"""A partner system talking to Liaison over gRPC, in Python with grpcio.

    pip install -r requirements.txt
    LIAISON_HUB=localhost:50051 LIAISON_API_KEY=lsk_... python3 client.py

The stubs are generated from the repository's protos (`../../proto`) into
`generated/` on first run, with grpcio-tools' protoc. The client creates a customer,
reads it back, changes it with a field mask and its etag, lists the caller's
customers page by page, logs a purchase, shows what a refused request carries (the
`google.rpc.BadRequest` in the status details), and reads the caller's event feed
for two seconds.
"""

import os
import pathlib
import subprocess
import sys
import time

import grpc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
GENERATED = pathlib.Path(os.environ.get("LIAISON_GENERATED_DIR", HERE / "generated"))


def generate():
    """Generates the Python modules of every proto the hub serves, once."""
    if (GENERATED / "liaison" / "v1" / "customers_pb2.py").exists():
        return
    GENERATED.mkdir(exist_ok=True)
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
         f"--python_out={GENERATED}", f"--grpc_python_out={GENERATED}", *files],
        check=True,
    )


generate()
sys.path.insert(0, str(GENERATED))

from google.protobuf import field_mask_pb2, timestamp_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from liaison.v1 import customers_pb2, customers_pb2_grpc  # noqa: E402
from liaison.v1 import events_pb2, events_pb2_grpc  # noqa: E402
from liaison.v1 import interactions_pb2, interactions_pb2_grpc  # noqa: E402


def bad_request_of(error: grpc.RpcError):
    """The field violations in a refusal's `grpc-status-details-bin`."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    return [(v.field, v.description) for v in bad.field_violations]
    return []


def main():
    hub = os.environ.get("LIAISON_HUB", "localhost:50051")
    key = os.environ["LIAISON_API_KEY"]
    auth = [("authorization", f"Bearer {key}")]
    channel = grpc.insecure_channel(hub)
    customers = customers_pb2_grpc.CustomerServiceStub(channel)
    interactions = interactions_pb2_grpc.InteractionServiceStub(channel)
    events = events_pb2_grpc.EventServiceStub(channel)

    created = customers.CreateCustomer(
        customers_pb2.CreateCustomerRequest(
            customer=customers_pb2.Customer(
                kind=customers_pb2.PERSON,
                given_name="Ada",
                family_name="Lovelace",
                emails=[customers_pb2.EmailContact(address="ada@example.com")],
            ),
            request_id="python-example-1",  # a retry with the same id is answered once
        ),
        metadata=auth,
    )
    print("created", created.name, created.display_name)

    got = customers.GetCustomer(customers_pb2.GetCustomerRequest(name=created.name), metadata=auth)
    updated = customers.UpdateCustomer(
        customers_pb2.UpdateCustomerRequest(
            customer=customers_pb2.Customer(name=got.name, etag=got.etag, tags=["vip"]),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
        metadata=auth,
    )
    print("updated", updated.name, "tags", list(updated.tags))

    names, token = [], ""
    while True:
        page = customers.ListCustomers(
            customers_pb2.ListCustomersRequest(page_size=1, page_token=token), metadata=auth
        )
        names += [c.name for c in page.customers]
        token = page.next_page_token
        if not token:
            break
    print("listed", len(names), "customers")

    logged = interactions.LogInteraction(
        interactions_pb2.LogInteractionRequest(
            parent=created.name,
            interaction=interactions_pb2.Interaction(
                type=interactions_pb2.PURCHASE,
                visibility=interactions_pb2.SHARED,
                occur_time=timestamp_pb2.Timestamp(seconds=int(time.time())),
                summary="A difference engine",
                amount=interactions_pb2.Money(currency_code="GBP", units=17000),
            ),
        ),
        metadata=auth,
    )
    print("logged", logged.name)

    try:
        customers.CreateCustomer(
            customers_pb2.CreateCustomerRequest(customer=customers_pb2.Customer(kind=customers_pb2.PERSON)),
            metadata=auth,
        )
        sys.exit("a customer without a name was accepted")
    except grpc.RpcError as error:
        print("refused", error.code().name, bad_request_of(error))

    seen = []
    try:
        for message in events.WatchEvents(
            events_pb2.WatchEventsRequest(after_sequence=0, event_types=["customer.*"]),
            metadata=auth,
            timeout=2,
        ):
            if message.HasField("event"):
                seen.append(message.event.type)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    print("events", " ".join(seen))


if __name__ == "__main__":
    main()
