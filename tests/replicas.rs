//! Replicas on PostgreSQL (issue 11): several `wgmesh server` processes sharing one throwaway
//! cluster (tests/common/postgres.rs) on loopback.

mod common;

use common::postgres::PgCluster;

#[test]
fn the_throwaway_cluster_takes_a_password_login_and_stops_and_starts() {
    let mut pg = PgCluster::start();
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", pg.log()));
    let row = client.query_one("SELECT 1 + 1", &[]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    drop(client);
    pg.stop();
    assert!(postgres::Client::connect(&pg.url(), postgres::NoTls).is_err());
    pg.start_again();
    let mut client = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    client.batch_execute("SELECT 1").unwrap();
}
