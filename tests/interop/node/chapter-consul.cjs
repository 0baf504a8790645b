// Runs the chapter's Node ConsulConfig (its path in CONFMESH_CHAPTER) against CONSUL_HOST:CONSUL_PORT:
// prints one JSON line when loaded and one per change it sees; exits when stdin closes.
const path = require('path');
const ConsulConfig = require(path.join(process.env.CONFMESH_CHAPTER, 'consul-config.js'));

(async () => {
  const config = new ConsulConfig({ serviceName: 'orders', environment: 'prod' });
  const loaded = await config.load();
  console.log(JSON.stringify({ event: 'loaded', config: loaded }));
  config.watch('database/pool', (newValue, oldValue) => {
    console.log(JSON.stringify({ event: 'change', newValue, oldValue }));
  });
  process.stdin.on('end', () => { config.close(); process.exit(0); });
  process.stdin.resume();
})().catch((err) => { console.error(err); process.exit(1); });
