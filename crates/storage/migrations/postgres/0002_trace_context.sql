-- The W3C traceparent of the request that wrote each version (NULL when tracing is off), so
-- that the change feed carries the trace on to the warehouse.
ALTER TABLE resource_version ADD COLUMN traceparent TEXT;
