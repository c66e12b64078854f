-- A grantee's list filtered on a tag, email or phone walks its grants and asks, for
-- each granted record, whether it has the key (store/customers/query.rs, narrow): a
-- point probe of this index, which also serves every lookup of a record's keys by
-- its id (it replaces the index on customer_id alone).
CREATE INDEX customer_keys_by_customer_key ON customer_keys (customer_id, kind, key);
DROP INDEX customer_keys_by_customer;
