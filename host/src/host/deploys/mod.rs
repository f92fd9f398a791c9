//! Deploys, as the host runs them: the version files and their compiled
//! forms (`versions`). Deploy metadata is the store's (`store::deploys`, or
//! in a cluster `cluster`'s PostgreSQL tables).

pub mod versions;
