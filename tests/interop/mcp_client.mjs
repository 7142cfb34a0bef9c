// An MCP client written with the official TypeScript SDK (@modelcontextprotocol/sdk), as an
// agent's developer would write it, for the interop tests (tests/interop/test_mcp_interop.py
// runs it; scripts/interop.sh runs them):
//
//   MCP_CLIENT_ID=... MCP_CLIENT_SECRET=... MCP_EXPECTED_ISSUER=... [MCP_SCOPE=tools:call] \
//     node tests/interop/mcp_client.mjs MCP_SERVER_URL [TOOL]
//
// It connects to the MCP server with the SDK's Client and StreamableHTTPClientTransport, whose
// authProvider is the SDK's ClientCredentialsProvider holding only the agent's client_id and
// client_secret (and the issuer they belong to). Everything else is the SDK's own discovery: the
// server's 401, its RFC 9728 protected resource metadata, the authorization server's RFC 8414
// metadata, then the token request with `resource`; the token is never handed to it. It lists
// the tools, calls TOOL (default `whoami`) with no arguments, and prints one JSON object on
// stdout:
//
//   {"tools": [names], "result": <the call's structuredContent, or its text parsed as JSON>,
//    "requests": [{"method", "url", "status"}, ...]}
//
// `requests` is every HTTP request the SDK made, in order (a logging wrapper around fetch,
// passed as the transport's `fetch` option, which the SDK also uses for discovery and the token
// request). On failure it prints the error on stderr and exits 1; after TIMEOUT_MS it exits 2.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const TIMEOUT_MS = Number(process.env.MCP_CLIENT_TIMEOUT_MS ?? 30000);

function required(name) {
    const value = process.env[name];
    if (!value) {
        console.error(`mcp_client: ${name} is not set`);
        process.exit(1);
    }
    return value;
}

async function main() {
    const [serverUrl, tool = 'whoami'] = process.argv.slice(2);
    if (!serverUrl) {
        console.error('usage: node mcp_client.mjs MCP_SERVER_URL [TOOL]');
        process.exit(1);
    }
    const requests = [];
    const loggingFetch = async (input, init) => {
        const url = input instanceof Request ? input.url : String(input);
        const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
        const response = await fetch(input, init);
        requests.push({ method, url, status: response.status });
        return response;
    };

    const authProvider = new ClientCredentialsProvider({
        clientId: required('MCP_CLIENT_ID'),
        clientSecret: required('MCP_CLIENT_SECRET'),
        expectedIssuer: required('MCP_EXPECTED_ISSUER'),
        scope: process.env.MCP_SCOPE || undefined,
    });
    const transport = new StreamableHTTPClientTransport(new URL(serverUrl), {
        authProvider,
        fetch: loggingFetch,
    });
    const client = new Client({ name: 'agentidp-interop-node', version: '0.0.0' });
    await client.connect(transport);
    try {
        const { tools } = await client.listTools();
        const call = await client.callTool({ name: tool, arguments: {} });
        if (call.isError) {
            throw new Error(`tool ${tool} failed: ${JSON.stringify(call.content)}`);
        }
        let result = call.structuredContent;
        if (result === undefined) {
            const text = call.content.find((block) => block.type === 'text');
            result = text ? JSON.parse(text.text) : null;
        }
        process.stdout.write(JSON.stringify({ tools: tools.map((t) => t.name), result, requests }) + '\n');
    } finally {
        await client.close();
    }
}

const timer = setTimeout(() => {
    console.error(`mcp_client: no result within ${TIMEOUT_MS} ms`);
    process.exit(2);
}, TIMEOUT_MS);
timer.unref();

main().then(
    () => process.exit(0),
    (error) => {
        console.error(`mcp_client: ${error?.stack ?? error}`);
        process.exit(1);
    },
);
